"""The SQLite sink: tables derived from the one results schema, every result stream written, a device batch's
predictions, incidents and state in one transaction, what a restart resumes from read back, retention, and
databases of earlier releases upgraded in place."""
import pickle
import sqlite3

import pytest

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from features.schema import DeadLetter, DeadLetterReason
from features.window import WindowState
from inference_pipeline.builder import LOCAL_RUNNER
from inference_pipeline.connectors.base import SinkContext
from inference_pipeline.connectors.sqlite import (
    RetentionSettings,
    SqliteRestore,
    SqliteSettings,
    SqliteSink,
    connect,
    prune,
    write_tables,
)
from inference_pipeline.results import (
    ALERTS,
    DEAD_LETTERS,
    PREDICTIONS,
    TABLES,
    DeviceResults,
    DeviceSnapshot,
    Incident,
    PredictionBatch,
)


def _prediction_rows(db, device, rows):
    with connect(db) as connection:
        connection.executemany(
            "INSERT INTO predictions (event_id, device_id, event_time, received_at, processing_time, anomaly_score, "
            "raw_score, threshold, is_anomaly, window_fill, model_name, model_version, late) "
            "VALUES (?, ?, ?, 0, 0, 0, 0, 0.5, 0, 30, 'm', '1', 0)",
            [(event_id, device, ts) for event_id, ts in rows])


def device_results(ids, times, incidents=(), device="d"):
    """A device batch's results: predictions of ``ids`` at ``times``, ``incidents`` and the device's state."""
    prediction = PredictionBatch(device, np.asarray(ids, dtype=object), np.asarray(times), np.asarray(times), 3.0,
                                 np.zeros(len(ids)), np.zeros(len(ids)), 0.5, np.full(len(ids), 30), 30, "m", "1")
    window = WindowState(np.array([[1.0, 2.0], [3.0, 4.0]]), float(times[-1]))
    snapshot = DeviceSnapshot(device, window, {"open": None}, list(incidents), 100.0)
    return DeviceResults(prediction, list(incidents), snapshot)


def test_predicted_ids_come_back_from_the_sink_newest_first_within_limit(tmp_path):
    db = tmp_path / "results.db"
    assert SqliteRestore(db, 10).seen_ids("d", 0.0) == []
    _prediction_rows(db, "d", [("x", 1.0), ("y", 2.0), ("z", 3.0)])
    _prediction_rows(db, "other", [("w", 2.5)])
    assert SqliteRestore(db, 2).seen_ids("d", 0.0) == [("y", 2.0), ("z", 3.0)]
    assert SqliteRestore(db, 10).seen_ids("d", 2.5) == [("z", 3.0)]


def test_a_batch_is_recorded_with_its_incidents_and_device_state_and_restore_reads_them_back(tmp_path):
    db = tmp_path / "results.db"
    opened = Incident("d:1.000", "d", 1.0, None, 0.8, 3, "open", "m", "1")
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = (pipeline | beam.Create([device_results(["a", "b"], [1.0, 2.0], [opened])])
             | write_tables(db, (PREDICTIONS, ALERTS)))
    restore = pickle.loads(pickle.dumps(SqliteRestore(db, 10)))
    assert restore.seen_ids("d", 0.0) == [("a", 1.0), ("b", 2.0)]
    snapshot = restore.snapshot("d")
    assert np.array_equal(snapshot.window.tail, [[1.0, 2.0], [3.0, 4.0]]) and snapshot.window.newest == 2.0
    assert snapshot.pending == [opened] and snapshot.alerting == {"open": None}
    assert restore.snapshot("other") is None
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT incident_id, status FROM alerts").fetchall() == [("d:1.000", "open")]


def test_a_failed_write_records_nothing_of_the_batch(tmp_path):
    db = tmp_path / "results.db"
    broken = device_results(["a"], [1.0])
    broken.incidents = [Incident("d:1.000", "d", 1.0, None, 0.8, 3, "open", "m", "1")]
    broken.incidents[0].device_id = None  # NOT NULL: the alert insert fails after the predictions insert
    with pytest.raises(Exception):
        with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
            _ = pipeline | beam.Create([broken]) | write_tables(db, (PREDICTIONS, ALERTS))
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT COUNT(*) FROM predictions").fetchone() == (0,)
        assert connection.execute("SELECT COUNT(*) FROM device_state").fetchone() == (0,)


def test_retention_deletes_by_age_and_keeps_the_newest_rows_and_open_alerts(tmp_path):
    db = tmp_path / "results.db"
    with connect(db) as connection:
        connection.executemany(
            "INSERT INTO predictions (event_id, device_id, event_time, received_at, processing_time, anomaly_score, "
            "raw_score, threshold, is_anomaly, window_fill, model_name, model_version, late) "
            "VALUES (?, 'd', ?, ?, 0, 0, 0, 0.5, 0, 30, 'm', '1', 0)",
            [(f"e{i}", float(i), float(i)) for i in range(100)])
        connection.executemany("INSERT INTO alerts (incident_id, device_id, start_time, end_time, peak_score, "
                               "n_events, status, model_name, model_version, kind) "
                               "VALUES (?, 'd', 0, ?, 1, 1, ?, 'm', '1', 'anomaly')",
                               [("old-closed", 5.0, "closed"), ("old-open", None, "open")])
        prune(connection, RetentionSettings(max_age_s=50.0), now=100.0)
        assert connection.execute("SELECT MIN(received_at), COUNT(*) FROM predictions").fetchone() == (50.0, 50)
        assert connection.execute("SELECT incident_id FROM alerts").fetchall() == [("old-open",)]
        prune(connection, RetentionSettings(max_rows=10), now=100.0)
        assert connection.execute("SELECT MIN(received_at), COUNT(*) FROM predictions").fetchone() == (90.0, 10)


def test_a_database_of_an_earlier_release_gains_the_new_columns(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE alerts (incident_id TEXT PRIMARY KEY, device_id TEXT NOT NULL)")
    with connect(db) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(alerts)")]
    assert columns == list(ALERTS.column_names)


def test_an_alerts_table_without_top_sensors_gains_the_column_and_records_them(tmp_path):
    db = tmp_path / "old.db"
    earlier = [column for column in ALERTS.columns if column.name != "top_sensors"]
    with sqlite3.connect(db) as connection:
        connection.execute(f"CREATE TABLE alerts ({', '.join(f'{c.name} TEXT' for c in earlier)})")
        connection.execute("INSERT INTO alerts VALUES ('old', 'd', 0, 1, 0.9, 3, 'closed', 'm', '1', 'anomaly', NULL)")
    why = [{"sensor": "rpm", "share": 0.62}, {"sensor": "pressure", "share": 0.21}]
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = (pipeline | beam.Create([Incident("new", "d", 2.0, None, 0.8, 3, "open", "m", "1", top_sensors=why)])
             | write_tables(db, (ALERTS,)))
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT incident_id, top_sensors FROM alerts ORDER BY incident_id").fetchall()
    assert rows == [("new", '[{"sensor":"rpm","share":0.62},{"sensor":"pressure","share":0.21}]'), ("old", None)]


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
        _ = pipeline | "P" >> beam.Create([("d", prediction)]) | "WP" >> sink.write((PREDICTIONS,))
        _ = pipeline | "A" >> beam.Create([opened]) | "WA" >> sink.write((ALERTS,))
        _ = pipeline | "D" >> beam.Create([letter]) | "WD" >> sink.write((DEAD_LETTERS,))
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | beam.Create([closed]) | sink.write((ALERTS,))
    assert sink.path == tmp_path / "results.db"
    with sqlite3.connect(sink.path) as connection:
        row = connection.execute("SELECT is_anomaly, sensor_contributions, label FROM predictions").fetchone()
        alerts = connection.execute("SELECT status, end_time FROM alerts").fetchall()
        dead = connection.execute("SELECT reason, device_id FROM dead_letters").fetchall()
    assert row == (1, '{"pressure":0.7,"rpm":0.3}', None)
    assert alerts == [("closed", 9.0)] and dead == [("bad_json", None)]
