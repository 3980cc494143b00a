"""The PostgreSQL sink, against the shared server (127.0.0.1:5432, database ``test``) in a fresh schema of its own per
test (dropped after): tables derived from the one results schema, every result stream written through a Beam
pipeline, a device batch's predictions, incidents and state in one transaction, what a restart resumes from read
back, a batch written twice recorded once, a lost connection reopened, tables of an earlier release migrated."""
import pickle
import uuid

import apache_beam as beam
import numpy as np
import psycopg
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from features.schema import DeadLetter, DeadLetterReason
from inference_pipeline.config import load_config
from inference_pipeline.builder import LOCAL_RUNNER
from inference_pipeline.connectors.base import SinkContext
from inference_pipeline.connectors.postgres import (
    ALL_TABLES,
    DEFAULT_DSN,
    Database,
    PostgresRestore,
    PostgresSettings,
    PostgresSink,
    ensure_schema,
    schema_ddl,
    write_tables,
)
from inference_pipeline.runtime.run import event_rules, run_pipeline
from inference_pipeline.steps.summaries import MinuteTotals, fold
from inference_pipeline.results import (
    ALERTS,
    DEAD_LETTERS,
    DEVICE_MINUTES,
    PREDICTIONS,
    SHADOW_PREDICTIONS,
    TABLES,
    Incident,
    PredictionBatch,
)
from tests.conftest import REPO
from tests.inference_pipeline.connectors.test_sqlite import device_results
from training.simulate import iter_payloads, simulate_fleet

PG_TYPES = {"text": "text", "real": "double precision", "integer": "bigint", "json": "jsonb"}


@pytest.fixture
def settings():
    try:
        psycopg.connect(DEFAULT_DSN, connect_timeout=3).close()
    except psycopg.OperationalError:
        pytest.skip(f"no PostgreSQL server at {DEFAULT_DSN}")
    schema = f"iotml_test_{uuid.uuid4().hex[:10]}"
    yield PostgresSettings(schema=schema, retry={"initial_s": 0.05, "max_s": 0.5, "max_elapsed_s": 20})
    with psycopg.connect(DEFAULT_DSN, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def query(settings, statement, args=()):
    with psycopg.connect(settings.dsn, options=f"-c search_path={settings.db_schema}") as connection:
        return connection.execute(statement, args).fetchall()


def run(*branches):
    """One pipeline: each (elements, tables, settings) written by its own Create and sink write."""
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        for i, (elements, tables, settings) in enumerate(branches):
            _ = pipeline | f"C{i}" >> beam.Create(elements) | f"W{i}" >> write_tables(settings, tables)


def test_tables_have_exactly_the_schema_columns_types_and_keys(settings):
    with psycopg.connect(settings.dsn, autocommit=True) as connection:
        ensure_schema(connection, settings.db_schema)
        ensure_schema(connection, settings.db_schema)  # idempotent
    for table in ALL_TABLES:
        info = query(settings, "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                               "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                     (settings.db_schema, table.name))
        assert tuple(row[0] for row in info) == table.column_names
        assert [row[1] for row in info] == [PG_TYPES[column.type] for column in table.columns]
        assert [row[2] == "YES" for row in info] == [column.nullable for column in table.columns]
        unique = query(settings, "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                       (settings.db_schema, f"{table.name}_key"))
        assert len(unique) == 1 and "UNIQUE" in unique[0][0]
    assert schema_ddl("iotml").count("CREATE TABLE IF NOT EXISTS") == len(ALL_TABLES)


def test_a_batch_is_recorded_with_its_incidents_and_device_state_and_restore_reads_them_back(settings):
    restore = pickle.loads(pickle.dumps(PostgresRestore(settings, 10)))
    assert restore.seen_ids("d", 0.0) == [] and restore.snapshot("d") is None  # no tables yet
    opened = Incident("d:1.000", "d", 1.0, None, 0.8, 3, "open", "m", "1")
    run(([device_results(["a", "b", "c"], [1.0, 2.0, 3.0], [opened]), device_results(["w"], [2.5], device="other")],
         (PREDICTIONS, ALERTS), settings))
    assert restore.seen_ids("d", 0.0) == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert PostgresRestore(settings, 2).seen_ids("d", 0.0) == [("b", 2.0), ("c", 3.0)]
    assert restore.seen_ids("d", 2.5) == [("c", 3.0)]
    snapshot = restore.snapshot("d")
    assert np.array_equal(snapshot.window.tail, [[1.0, 2.0], [3.0, 4.0]]) and snapshot.window.newest == 3.0
    assert snapshot.pending == [opened] and snapshot.alerting == {"open": None}
    assert restore.snapshot("nobody") is None
    assert query(settings, "SELECT incident_id, status FROM alerts") == [("d:1.000", "open")]


def test_a_failed_write_records_nothing_of_the_batch(settings):
    broken = device_results(["a"], [1.0])
    broken.incidents = [Incident("d:1.000", "d", 1.0, None, 0.8, 3, "open", "m", "1")]
    broken.incidents[0].device_id = None  # NOT NULL: the alert insert fails after the predictions insert
    with pytest.raises(Exception, match="not-null|null value"):
        run(([broken], (PREDICTIONS, ALERTS), settings))
    assert query(settings, "SELECT COUNT(*) FROM predictions") == [(0,)]
    assert query(settings, "SELECT COUNT(*) FROM device_state") == [(0,)]


def test_every_result_stream_round_trips_through_the_sink(settings):
    sink = PostgresSink(settings, SinkContext(None, None))
    prediction = PredictionBatch("d", np.asarray(["a"], dtype=object), np.array([1.0]), np.array([1.0]), 2.0,
                                 np.array([0.9]), np.array([0.8]), 0.5, np.array([30]), 30, "m", "1",
                                 sensor_contributions=[{"pressure": 0.7, "rpm": 0.3}])
    opened = Incident("d:1.000", "d", 1.0, None, 0.8, 3, "open", "m", "1")
    closed = Incident("d:1.000", "d", 1.0, 9.0, 0.9, 5, "closed", "m", "1",
                      top_sensors=[{"sensor": "rpm", "share": 1.0}])
    letter = DeadLetter(DeadLetterReason.BAD_JSON, "invalid JSON", "{\x00", 1.5, None)  # NUL: not storable as is
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | "P" >> beam.Create([("d", prediction)]) | "WP" >> sink.write((PREDICTIONS,))
        _ = pipeline | "A" >> beam.Create([opened]) | "WA" >> sink.write((ALERTS,))
        _ = pipeline | "D" >> beam.Create([letter]) | "WD" >> sink.write((DEAD_LETTERS,))
        _ = pipeline | "S" >> beam.Create([("d", prediction)]) | "WS" >> sink.write((SHADOW_PREDICTIONS,))
    assert query(settings, "SELECT status, end_time FROM alerts") == [("open", None)]
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | beam.Create([closed]) | sink.write((ALERTS,))
    row = query(settings, "SELECT event_id, device_id, event_time, raw_score, anomaly_score, threshold, is_anomaly, "
                          "window_fill, sensor_contributions, label, late FROM predictions")
    assert row == [("a", "d", 1.0, 0.9, 0.8, 0.5, 1, 30, {"pressure": 0.7, "rpm": 0.3}, None, 0)]
    assert query(settings, "SELECT event_id, anomaly_score FROM shadow_predictions") == [("a", 0.8)]
    assert query(settings, "SELECT incident_id, status, end_time, peak_score, n_events, kind, sensor, top_sensors "
                           "FROM alerts") == [("d:1.000", "closed", 9.0, 0.9, 5, "anomaly", None,
                                               [{"sensor": "rpm", "share": 1.0}])]
    assert query(settings, "SELECT reason, detail, payload, received_at, device_id FROM dead_letters") == [
        ("bad_json", "invalid JSON", "{\ufffd", 1.5, None)]
    assert query(settings, "SELECT COUNT(*) FROM device_state") == [(0,)]  # predictions without a device batch


def test_writing_the_same_batch_twice_leaves_one_row_each(settings):
    opened = Incident("d:1.000", "d", 1.0, None, 0.8, 3, "open", "m", "1")
    closed = Incident("d:1.000", "d", 1.0, 9.0, 0.9, 5, "closed", "m", "1")
    letters = [DeadLetter(DeadLetterReason.BAD_JSON, "invalid JSON", "{", 1.5, None),
               DeadLetter(DeadLetterReason.BAD_JSON, "invalid JSON", "{", 2.5, None)]  # a second occurrence
    batches = [device_results(["a", "b"], [1.0, 2.0], [opened]), device_results(["c"], [3.0], [closed]),
               device_results(["b", "c"], [2.0, 3.0])]  # redelivered events, in the same bundle
    for _ in range(2):
        run((batches, (PREDICTIONS, ALERTS), settings), (letters + letters[:1], (DEAD_LETTERS,), settings))
    assert query(settings, "SELECT COUNT(*), COUNT(DISTINCT (device_id, event_id)) FROM predictions") == [(3, 3)]
    assert query(settings, "SELECT incident_id, status FROM alerts") == [("d:1.000", "closed")]
    assert query(settings, "SELECT received_at FROM dead_letters ORDER BY received_at") == [(1.5,), (2.5,)]
    assert query(settings, "SELECT device_id FROM device_state") == [("d",)]


def test_small_batches_commit_separately_and_record_the_same(settings):
    batches = [device_results([f"e{i}", f"f{i}"], [float(i), i + 0.5], device=f"d{i % 3}") for i in range(20)]
    run((batches, (PREDICTIONS,), settings.model_copy(update={"batch_rows": 3})))
    assert query(settings, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM predictions") == [(40, 40)]
    assert query(settings, "SELECT COUNT(*) FROM device_state") == [(3,)]


def test_a_lost_connection_is_reopened_and_the_transaction_run_again(settings, caplog):
    database = Database(settings, migrate=True)
    database.run(lambda connection: None)
    pid = database.run(lambda connection: connection.info.backend_pid)
    with psycopg.connect(settings.dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    attempts = []

    def count(connection):
        attempts.append(connection.info.backend_pid)
        return connection.execute(f'SELECT COUNT(*) FROM "{settings.db_schema}".predictions').fetchone()[0]

    assert database.run(count) == 0
    assert len(attempts) == 1 and attempts[0] != pid  # the dead connection failed before the work ran
    assert "retrying" in caplog.text
    database.close()


def test_an_unreachable_database_fails_after_the_retry_budget():
    settings = PostgresSettings(dsn="postgresql://postgres@127.0.0.1:1/test", schema="x",
                                retry={"initial_s": 0.05, "max_s": 0.1, "max_elapsed_s": 0.5})
    with pytest.raises(ConnectionError, match="127.0.0.1:1/test"):
        Database(settings).run(lambda connection: None)


def test_tables_of_an_earlier_release_gain_the_new_columns_and_keys(settings):
    schema = settings.db_schema
    with psycopg.connect(settings.dsn, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
        connection.execute(f'CREATE TABLE "{schema}".alerts (incident_id text NOT NULL, device_id text NOT NULL)')
        connection.execute(f'CREATE TABLE "{schema}".predictions (event_id text NOT NULL, device_id text NOT NULL)')
        connection.execute(f"INSERT INTO \"{schema}\".predictions VALUES ('old', 'd')")
        ensure_schema(connection, schema)
    for table in (ALERTS, PREDICTIONS):
        columns = query(settings, "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                                  "AND table_name = %s ORDER BY ordinal_position", (schema, table.name))
        assert [row[0] for row in columns] == list(table.column_names)
    run(([device_results(["old", "new"], [1.0, 2.0])], (PREDICTIONS,), settings))
    assert query(settings, "SELECT event_id, event_time FROM predictions ORDER BY event_id") == [
        ("new", 2.0), ("old", None)]


def test_an_alerts_table_without_top_sensors_gains_the_column_and_records_them(settings):
    schema = settings.db_schema
    earlier = ", ".join(f"{c.name} {PG_TYPES[c.type]}" for c in ALERTS.columns if c.name != "top_sensors")
    with psycopg.connect(settings.dsn, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
        connection.execute(f'CREATE TABLE "{schema}".alerts ({earlier})')
        connection.execute(f"INSERT INTO \"{schema}\".alerts VALUES ('old', 'd', 0, 1, 0.9, 3, 'closed', 'm', '1', "
                           "'anomaly', NULL)")
    why = [{"sensor": "rpm", "share": 0.62}, {"sensor": "pressure", "share": 0.21}]
    run(([Incident("new", "d", 2.0, None, 0.8, 3, "open", "m", "1", top_sensors=why)], (ALERTS,), settings))
    assert query(settings, "SELECT incident_id, top_sensors FROM alerts ORDER BY incident_id") == [
        ("new", why), ("old", None)]


def test_settings_take_no_password_in_the_dsn_and_never_echo_it():
    with pytest.raises(ValueError) as error:
        PostgresSettings(dsn="postgresql://postgres:s3cret@db.example:5432/results")
    assert "password" in str(error.value) and "s3cret" not in str(error.value)
    with pytest.raises(ValueError) as error:
        PostgresSettings(dsn="host=db password=s3cret")
    assert "s3cret" not in str(error.value)
    loaded = PostgresSettings.model_validate({"kind": "postgres", "schema": "results", "password_env": "PG_PASS"})
    assert loaded.db_schema == "results" and loaded.where == "127.0.0.1:5432/test"
    assert set(TABLES) <= {table.name for table in ALL_TABLES}


def test_the_password_comes_from_the_environment_when_connecting_and_is_never_logged(monkeypatch, caplog):
    import inference_pipeline.connectors.postgres as postgres
    calls = []

    def refuse(dsn, **options):
        calls.append(options)
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setenv("IOTML_TEST_PG_PASSWORD", "env-pa55word")
    monkeypatch.setattr(postgres.psycopg, "connect", refuse)
    settings = PostgresSettings(password_env="IOTML_TEST_PG_PASSWORD",
                                retry={"initial_s": 0.01, "max_s": 0.02, "max_elapsed_s": 0.1})
    assert "env-pa55word" not in pickle.dumps(settings).decode("latin-1")  # read by the worker, not pickled
    with pytest.raises(ConnectionError) as error:
        Database(settings).run(lambda connection: None)
    assert calls and all(options["password"] == "env-pa55word" for options in calls)
    assert "env-pa55word" not in str(error.value) and "env-pa55word" not in caplog.text


def test_a_configured_postgres_sink_records_a_stream_whose_counts_reconcile(settings, trained, tmp_path):
    """``kind: postgres`` from the config, on the pipeline ``iotml stream`` runs: every event in is one prediction
    or one dead letter in PostgreSQL."""
    frame = simulate_fleet(3, 90, seed=5, start=1767300000.0, fault_rate=0.3)
    payloads = list(iter_payloads(frame, trained.version.feature_spec.sensors)) + ["{broken", '{"device_id": 7}']
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join(payloads) + "\n")
    config = load_config(REPO / "configs" / "local.yaml", {
        "work_dir": str(tmp_path), "model.uri": str(trained.version.path),
        "source": {"kind": "replay", "path": str(stream)},
        "sinks": {"warehouse": {"kind": "postgres", "dsn": settings.dsn, "schema": settings.db_schema}}})
    run_pipeline(config, trained.version, event_rules(config, trained.version))
    [(predictions, distinct)] = query(settings, f'SELECT COUNT(*), COUNT(DISTINCT (device_id, event_id)) FROM '
                                                f'"{settings.db_schema}".predictions')
    [(dead,)] = query(settings, f'SELECT COUNT(*) FROM "{settings.db_schema}".dead_letters')
    assert predictions == distinct == len(frame) and dead == 2 and predictions + dead == len(payloads)


def test_per_minute_summaries_are_upserted_by_device_and_minute_with_no_duplicates(settings):
    def scored(times, scores, device="d", version="1"):
        times, scores = np.asarray(times, dtype=float), np.asarray(scores, dtype=float)
        return PredictionBatch(device, times.astype(str), times, times, 0.0, scores, scores, 0.5,
                               np.full(len(times), 30), 30, "m", version)

    totals, other = MinuteTotals(), MinuteTotals()
    first = [fold(totals, scored([0, 10], [0.2, 0.4]))[0], fold(totals, scored([20], [0.9]))[0],
             fold(other, scored([5], [0.1], device="e"))[0]]  # minute 0 twice in one bundle, another device's too
    run((first, (DEVICE_MINUTES,), settings))
    later = [fold(totals, scored([30, 70], [0.5, 0.3], version="2"))[0]]  # minute 0 again, in a later transaction
    run((later, (DEVICE_MINUTES,), settings))
    run((later, (DEVICE_MINUTES,), settings))  # the same rows written twice (a retried bundle)
    found = query(settings, "SELECT device_id, minute_start, count, round(mean_score::numeric, 6)::float, max_score, "
                            "anomalies, model_version FROM device_minutes ORDER BY device_id, minute_start")
    assert found == [("d", 0.0, 4, 0.5, 0.9, 2, "1,2"), ("d", 60.0, 1, 0.3, 0.3, 0, "2"),
                     ("e", 0.0, 1, 0.1, 0.1, 0, "1")]
