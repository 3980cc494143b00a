"""The SQLite sink: tables derived from the one results schema, every result stream written, and the ids it
already predicted read back for dedup after a restart."""
import sqlite3

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from features.schema import DeadLetter, DeadLetterReason
from inference_pipeline.builder import LOCAL_RUNNER
from inference_pipeline.connectors.base import SinkContext
from inference_pipeline.connectors.sqlite import PredictedIds, SqliteSettings, SqliteSink, connect, write_table
from inference_pipeline.results import ALERTS, DEAD_LETTERS, PREDICTIONS, TABLES, Incident, PredictionBatch


def _prediction_rows(db, device, rows):
    with connect(db) as connection:
        connection.executemany(
            "INSERT INTO predictions VALUES (?, ?, ?, 0, 0, 0, 0, 0.5, 0, 30, 'm', '1', NULL, NULL, NULL)",
            [(event_id, device, ts) for event_id, ts in rows])


def test_predicted_ids_come_back_from_the_sink_newest_first_within_limit(tmp_path):
    db = tmp_path / "results.db"
    assert PredictedIds(db, 10)("d", 0.0) == []
    _prediction_rows(db, "d", [("x", 1.0), ("y", 2.0), ("z", 3.0)])
    _prediction_rows(db, "other", [("w", 2.5)])
    assert PredictedIds(db, 2)("d", 0.0) == [("y", 2.0), ("z", 3.0)]
    assert PredictedIds(db, 10)("d", 2.5) == [("z", 3.0)]


def test_sink_rows_written_by_the_pipeline_are_what_restore_reads(tmp_path):
    from inference_pipeline.results import PredictionBatch

    db = tmp_path / "results.db"
    ids = np.asarray(["a", "b"], dtype=object)
    prediction = PredictionBatch("d", ids, np.array([1.0, 2.0]), np.array([1.0, 2.0]), 3.0, np.zeros(2),
                                 np.zeros(2), 0.5, np.array([30, 30]), 30, "m", "1")
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | beam.Create([("d", prediction)]) | write_table(db, PREDICTIONS)
    assert PredictedIds(db, 10)("d", 0.0) == [("a", 1.0), ("b", 2.0)]


def test_tables_have_exactly_the_schema_columns(tmp_path):
    with connect(tmp_path / "results.db") as connection:
        for table in TABLES.values():
            info = connection.execute(f"PRAGMA table_info({table.name})").fetchall()
            assert tuple(row[1] for row in info) == table.column_names
            assert [not row[3] for row in info] == [column.nullable for column in table.columns]


def test_every_result_stream_round_trips_through_the_sink(tmp_path):
    sink = SqliteSink(SqliteSettings(), SinkContext(tmp_path, None))
    prediction = PredictionBatch("d", np.asarray(["a"], dtype=object), np.array([1.0]), np.array([1.0]), 2.0,
                                 np.array([0.9]), np.array([0.8]), 0.5, np.array([30]), 30, "m", "1",
                                 sensor_contributions=[{"pressure": 0.7, "rpm": 0.3}])
    opened = Incident("d:1.000", "d", 1.0, None, 0.8, 3, "open", "m", "1")
    closed = Incident("d:1.000", "d", 1.0, 9.0, 0.9, 5, "closed", "m", "1")
    letter = DeadLetter(DeadLetterReason.BAD_JSON, "invalid JSON", "{", 1.5, None)
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | "P" >> beam.Create([("d", prediction)]) | "WP" >> sink.write(PREDICTIONS)
        _ = pipeline | "A" >> beam.Create([opened]) | "WA" >> sink.write(ALERTS)
        _ = pipeline | "D" >> beam.Create([letter]) | "WD" >> sink.write(DEAD_LETTERS)
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | beam.Create([closed]) | sink.write(ALERTS)
    assert sink.path == tmp_path / "results.db"
    with sqlite3.connect(sink.path) as connection:
        row = connection.execute("SELECT is_anomaly, sensor_contributions, label FROM predictions").fetchone()
        alerts = connection.execute("SELECT status, end_time FROM alerts").fetchall()
        dead = connection.execute("SELECT reason, device_id FROM dead_letters").fetchall()
    assert row == (1, '{"pressure":0.7,"rpm":0.3}', None)
    assert alerts == [("closed", 9.0)] and dead == [("bad_json", None)]
