import sqlite3

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to

from features.schema import DeviceNotice
from inference_pipeline.builder import LOCAL_RUNNER
from inference_pipeline.connectors.sqlite import connect, write_tables
from inference_pipeline.results import DEVICE_MINUTES, PredictionBatch
from inference_pipeline.steps.summaries import MinuteTotals, SummarizeMinutes, fold


def batch(times, scores, device="pump-1", version="1", fill=30, late=None):
    times = np.asarray(times, dtype=float)
    scores = np.asarray(scores, dtype=float)
    return PredictionBatch(device, times.astype(str), times, times, 0.0, scores, scores, 0.5,
                           np.full(len(times), fill), 30, "m", version,
                           late=None if late is None else np.asarray(late, dtype=bool))


def rows(summary):
    """(minute_start, count, mean_score, max_score, anomalies, model_version) per row."""
    return [(r[1], r[2], round(r[3], 6), r[4], r[5], r[6]) for r in DEVICE_MINUTES.rows(summary)]


def test_a_batch_yields_one_row_per_minute_it_touches_vectorised():
    totals = MinuteTotals()
    summary, dropped = fold(totals, batch([0, 30, 59.9, 60, 125], [0.2, 0.9, 0.4, 0.6, 0.1]), now=7.0)
    assert dropped == 0 and summary.device_id == "pump-1" and summary.updated_at == 7.0
    assert rows(summary) == [(0.0, 3, 0.5, 0.9, 1, "1"), (60.0, 1, 0.6, 0.6, 1, "1"), (120.0, 1, 0.1, 0.1, 0, "1")]


def test_the_partial_minute_is_emitted_at_each_batch_and_converges():
    totals = MinuteTotals()
    first, _ = fold(totals, batch([0, 10], [0.2, 0.4]))
    second, _ = fold(totals, batch([20, 30], [0.9, 0.1]))
    assert rows(first) == [(0.0, 2, 0.3, 0.4, 0, "1")]
    assert rows(second) == [(0.0, 4, 0.4, 0.9, 1, "1")]  # running totals: the upsert leaves the fuller row


def test_a_minute_is_final_once_event_time_passes_it_and_only_touched_minutes_are_written():
    totals = MinuteTotals()
    fold(totals, batch([0, 50], [0.2, 0.4]))
    moved_on, _ = fold(totals, batch([61, 70], [0.3, 0.3]))
    assert rows(moved_on) == [(60.0, 2, 0.3, 0.3, 0, "1")]  # minute 0 was written whole by the batch before


def test_late_events_fold_into_their_own_minute_until_it_leaves_the_state():
    totals = MinuteTotals()
    fold(totals, batch([0, 10], [0.2, 0.2]))
    fold(totals, batch([65, 130], [0.3, 0.3]))
    late, dropped = fold(totals, batch([20, 140], [0.8, 0.1], late=[True, False]))
    assert dropped == 0
    assert rows(late) == [(0.0, 3, 0.4, 0.8, 1, "1"), (120.0, 2, 0.2, 0.3, 0, "1")]
    fold(totals, batch([1000], [0.1]), keep_s=600.0)  # minutes before 360 s leave the state
    assert totals.minutes.tolist() == [960.0]
    too_late, dropped = fold(totals, batch([30, 970], [0.9, 0.1]), keep_s=600.0)
    assert dropped == 1 and rows(too_late) == [(960.0, 2, 0.1, 0.1, 0, "1")]  # minute 0's row is not overwritten


def test_a_minute_scored_by_two_versions_names_both_in_scoring_order():
    totals = MinuteTotals()
    fold(totals, batch([0], [0.1], version="1"))
    fold(totals, batch([5], [0.1], version="2"))
    summary, _ = fold(totals, batch([10, 70], [0.1, 0.1], version="2"))
    assert [row[-1] for row in rows(summary)] == ["1,2", "2"]


def test_warming_up_rows_are_counted_but_never_anomalies():
    summary, _ = fold(MinuteTotals(), batch([0, 1], [0.9, 0.9], fill=5))
    assert rows(summary) == [(0.0, 2, 0.9, 0.9, 0, "1")]


def test_minutes_come_out_per_device_as_the_stream_runs_and_an_expiry_drops_the_totals():
    notice = PredictionBatch("a", np.zeros(0, dtype=object), np.zeros(0), np.zeros(0), 0.0, np.zeros(0), np.zeros(0),
                             0.5, np.zeros(0), 30, "m", "1", notice=DeviceNotice(DeviceNotice.EXPIRE, 0.0))
    stream = (EventStream()
              .add_elements([("a", batch([0, 10], [0.2, 0.4], device="a")), ("b", batch([5], [0.9], device="b"))])
              .advance_watermark_to(10)
              .add_elements([("a", batch([20, 61], [0.6, 0.1], device="a"))])
              .advance_watermark_to(20)
              .add_elements([("a", notice)])
              .advance_watermark_to(30)
              .add_elements([("a", batch([62], [0.5], device="a"))])
              .advance_watermark_to_infinity())
    with beam.Pipeline(options=PipelineOptions([], runner="BundleBasedDirectRunner", streaming=True)) as pipeline:
        summaries = pipeline | stream | SummarizeMinutes()
        found = summaries | beam.FlatMap(lambda s: [(s.device_id, *row) for row in rows(s)])
        assert_that(found, equal_to([
            ("a", 0.0, 2, 0.3, 0.4, 0, "1"), ("b", 0.0, 1, 0.9, 0.9, 1, "1"),
            ("a", 0.0, 3, 0.4, 0.6, 1, "1"), ("a", 60.0, 1, 0.1, 0.1, 0, "1"),
            ("a", 60.0, 1, 0.5, 0.5, 1, "1"),  # after the expiry: totals start afresh
        ]))


def test_the_sqlite_sink_upserts_a_minute_written_several_times(tmp_path):
    db = tmp_path / "results.db"
    totals = MinuteTotals()
    written = [fold(totals, batch(times, scores))[0] for times, scores in
               (([0, 10], [0.2, 0.4]), ([20, 30], [0.9, 0.1]), ([40, 65], [0.5, 0.5]))]
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | beam.Create(written) | write_tables(db, (DEVICE_MINUTES,))
    with connect(db) as connection:
        found = connection.execute("SELECT device_id, minute_start, count, max_score, anomalies FROM device_minutes "
                                   "ORDER BY minute_start").fetchall()
    assert found == [("pump-1", 0.0, 5, 0.9, 2), ("pump-1", 60.0, 1, 0.5, 1)]
    with sqlite3.connect(db) as connection:  # the key is composite: the same minute of another device is its own row
        connection.execute("INSERT OR REPLACE INTO device_minutes VALUES ('pump-2', 0.0, 1, 0.1, 0.1, 0, '1', 0.0)")
        assert connection.execute("SELECT COUNT(*) FROM device_minutes").fetchone() == (3,)
