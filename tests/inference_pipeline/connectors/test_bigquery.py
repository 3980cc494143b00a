"""The BigQuery sink: schemas and rows derived from the one results schema, the kind accepted by the config, one
``WriteToBigQuery`` per result table in the built graph for each method (Storage Write API refused clearly without
its Java expansion service), the one-row-per-key views, and a real streaming-inserts write through Beam's own clients
to a local stand-in of the BigQuery REST API."""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.internal.gcp import auth
from apache_beam.io.gcp.bigquery import WriteToBigQuery
from apache_beam.io.gcp.internal.clients.bigquery.bigquery_v2_client import BigqueryV2
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from features.schema import DeadLetter
from inference_pipeline.builder import LOCAL_RUNNER, Outputs, create_pipeline, write_outputs
from inference_pipeline.config import ConfigError, load_config
from inference_pipeline.connectors.base import SinkContext
from inference_pipeline.connectors.bigquery import (
    BIGQUERY_TYPES,
    DAY_COLUMN,
    BigQuerySettings,
    BigQuerySink,
    add_columns_sql,
    bigquery_rows,
    table_schema,
    view_sql,
)
from inference_pipeline.results import (
    ALERTS,
    DEAD_LETTERS,
    DEVICE_MINUTES,
    PREDICTIONS,
    TABLES,
    Incident,
    MinuteSummary,
    PredictionBatch,
)
from inference_pipeline.runtime.run import event_rules
from tests.conftest import REPO
from tests.inference_pipeline.connectors.test_sqlite import device_results

DATASET = "iotml-test:plant_results"
ALL_STREAMS = ["predictions", "alerts", "dead_letters", "device_minutes"]
DEAD_LETTER_ORIGINS = 3  # parse, inference, score: the builder writes each


def config_with(tmp_path, overrides=None, **sink):
    return load_config(REPO / "configs" / "local.yaml", {
        "work_dir": str(tmp_path), "source": {"kind": "replay", "path": str(tmp_path / "events.jsonl")},
        "sinks": {"warehouse": {"kind": "bigquery", "dataset": DATASET, **sink}}, **(overrides or {})})


def bigquery_writes(pipeline: beam.Pipeline) -> list[WriteToBigQuery]:
    found = []

    class Writes(PipelineVisitor):
        def enter_composite_transform(self, node):
            if isinstance(node.transform, WriteToBigQuery):
                found.append(node.transform)

    pipeline.visit(Writes())
    return found


def tables_written(writes: list[WriteToBigQuery]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for write in writes:
        counts[write.table_reference.tableId] = counts.get(write.table_reference.tableId, 0) + 1
    return counts


def scored(device="d"):
    return PredictionBatch(device, np.asarray(["a", "b"], dtype=object), np.array([1767225600.5, 1767225601.5]),
                           np.array([1767225600.6, 1767225601.6]), 1767225602.0, np.array([0.9, 0.1]),
                           np.array([0.8, 0.2]), 0.5, np.array([30, 30]), 30, "iot-anomaly", "3",
                           sensor_contributions=[{"rpm": 0.7, "temp": 0.3}, None])


def test_every_result_table_maps_each_column_type_and_nullability_once():
    for table in TABLES.values():
        fields = table_schema(table)["fields"]
        assert [f["name"] for f in fields] == list(table.column_names)
        assert [f["type"] for f in fields] == [BIGQUERY_TYPES[c.type] for c in table.columns]
        assert [f["mode"] for f in fields] == ["NULLABLE" if c.nullable else "REQUIRED" for c in table.columns]
        assert set(f["type"] for f in fields) <= {"STRING", "FLOAT64", "INT64"}
        partitioned = table_schema(table, partition_by_day=True)["fields"]
        assert partitioned[-1] == {"name": DAY_COLUMN, "type": "DATE", "mode": "REQUIRED"}


def test_rows_are_dicts_of_every_column_with_json_columns_as_json_text_and_their_utc_event_date():
    why = [{"sensor": "rpm", "share": 0.7}, {"sensor": "temp", "share": 0.3}]
    opened = Incident("d:1.000", "d", 1767225600.5, None, 0.8, 3, "open", "iot-anomaly", "3", top_sensors=why)
    results = device_results(["x"], [1.0], [opened])
    results.predictions = scored()
    [first, second] = bigquery_rows(results, PREDICTIONS, partition_by_day=True)
    assert list(first)[:-1] == list(PREDICTIONS.column_names)
    assert first["event_id"] == "a" and first["anomaly_score"] == 0.8 and first["is_anomaly"] == 1
    assert isinstance(first["is_anomaly"], int) and isinstance(first["window_fill"], int)
    assert json.loads(first["sensor_contributions"]) == {"rpm": 0.7, "temp": 0.3}
    assert second["sensor_contributions"] is None and second["label"] is None
    assert first[DAY_COLUMN] == "2026-01-01"
    assert DAY_COLUMN not in bigquery_rows(results, PREDICTIONS)[0]
    [alert] = bigquery_rows(results, ALERTS)
    assert alert["incident_id"] == "d:1.000" and alert["end_time"] is None and alert["status"] == "open"
    assert json.loads(alert["top_sensors"]) == why
    [letter] = bigquery_rows(DeadLetter("bad_json", "line 1", "{broken", 1767225700.0), DEAD_LETTERS, True)
    assert letter == {"reason": "bad_json", "detail": "line 1", "payload": "{broken", "received_at": 1767225700.0,
                      "device_id": None, DAY_COLUMN: "2026-01-01"}
    minutes = MinuteSummary("d", np.array([1767225600.0]), np.array([2]), np.array([0.5]), np.array([0.9]),
                            np.array([1]), ["3"], 1767225602.0)
    assert bigquery_rows(minutes, DEVICE_MINUTES) == [{
        "device_id": "d", "minute_start": 1767225600.0, "count": 2, "mean_score": 0.5, "max_score": 0.9,
        "anomalies": 1, "model_version": "3", "updated_at": 1767225602.0}]


def test_a_table_of_an_earlier_release_gains_the_nullable_columns_added_since():
    settings = BigQuerySettings(dataset=DATASET, table_prefix="line_a_")
    statement = add_columns_sql(settings, ALERTS)
    assert statement.startswith("ALTER TABLE `iotml-test.plant_results.line_a_alerts`\n")
    assert "ADD COLUMN IF NOT EXISTS `top_sensors` STRING" in statement
    assert "ADD COLUMN IF NOT EXISTS `end_time` FLOAT64" in statement and "`incident_id`" not in statement
    assert statement.count("ADD COLUMN") == sum(c.nullable for c in ALERTS.columns)


def test_the_config_accepts_the_kind_with_either_dataset_form(tmp_path):
    for dataset, project, dataset_id in ((DATASET, "iotml-test", "plant_results"),
                                         ("iotml-test.plant_results", "iotml-test", "plant_results")):
        settings = config_with(tmp_path, dataset=dataset, method="file_loads").sinks["warehouse"]
        assert isinstance(settings, BigQuerySettings) and settings.method == "file_loads"
        assert (settings.project, settings.dataset_id) == (project, dataset_id)
    assert config_with(tmp_path).sinks["warehouse"].method == "streaming_inserts"


@pytest.mark.parametrize("sink, field", [
    ({"dataset": "plant_results"}, "sinks.warehouse.dataset"),
    ({"dataset": "Bad Project:results"}, "sinks.warehouse.dataset"),
    ({"dataset": "iotml-test:plant-results"}, "sinks.warehouse.dataset"),
    ({"table_prefix": "iot-"}, "sinks.warehouse.table_prefix"),
    ({"method": "bulk"}, "sinks.warehouse.method"),
    ({"triggering_frequency_s": 0}, "sinks.warehouse.triggering_frequency_s"),
    ({"gcs_temp_location": "/tmp/loads"}, "sinks.warehouse.gcs_temp_location"),
    ({"method": "storage_write_api", "partition_by_day": True}, "partition_by_day"),
])
def test_bad_settings_are_refused_naming_the_field(tmp_path, sink, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        config_with(tmp_path, **sink)


def write_graph(config, options: dict) -> beam.Pipeline:
    """The builder's sink wiring (``write_outputs``) for ``config`` over stand-in result collections."""
    pipeline = beam.Pipeline(options=PipelineOptions.from_dictionary({"runner": LOCAL_RUNNER, **options}))
    results, minutes = pipeline | "Results" >> beam.Create([]), pipeline | "Minutes" >> beam.Create([])
    dead = {origin: pipeline | origin >> beam.Create([]) for origin in ("Parse", "Inference", "Score")}
    write_outputs(Outputs(results, dead, pipeline | "Duplicates" >> beam.Create([]), None, minutes), config,
                  config.build_sinks())
    return pipeline


@pytest.mark.parametrize("method, options, frequency", [
    ("streaming_inserts", {}, None),
    ("streaming_inserts", {"streaming": True}, None),
    ("file_loads", {"temp_location": "gs://iotml-test-bucket/tmp"}, None),
    ("file_loads", {"temp_location": "gs://iotml-test-bucket/tmp", "streaming": True}, 300),
])
def test_each_result_stream_expands_to_one_write_per_table_with_the_method(tmp_path, method, options, frequency):
    config = config_with(tmp_path, method=method, results=ALL_STREAMS, table_prefix="line_a_",
                         partition_by_day=True)
    writes = bigquery_writes(write_graph(config, options))
    assert tables_written(writes) == {"line_a_predictions": 1, "line_a_alerts": 1, "line_a_device_minutes": 1,
                                      "line_a_dead_letters": DEAD_LETTER_ORIGINS}
    for write in writes:
        assert write.method == getattr(WriteToBigQuery.Method, method.upper())
        assert (write.table_reference.projectId, write.table_reference.datasetId) == ("iotml-test", "plant_results")
        assert (write.create_disposition, write.write_disposition) == ("CREATE_IF_NEEDED", "WRITE_APPEND")
        assert write.triggering_frequency == frequency
        assert write.additional_bq_parameters == {"timePartitioning": {"type": "DAY", "field": DAY_COLUMN}}
        table = TABLES[write.table_reference.tableId.removeprefix("line_a_")]
        assert write.schema == table_schema(table, partition_by_day=True)


def test_file_loads_without_a_cloud_storage_location_fail_at_construction_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="gcs_temp_location"):
        write_graph(config_with(tmp_path, method="file_loads"), {})
    own = config_with(tmp_path, method="file_loads", gcs_temp_location="gs://loads-bucket/iotml", results=["alerts"])
    assert all(w.custom_gcs_temp_location == "gs://loads-bucket/iotml" for w in bigquery_writes(write_graph(own, {})))


def test_storage_write_api_without_a_reachable_expansion_service_fails_at_construction_naming_the_options(tmp_path):
    """Beam 2.77 expands it through a Java expansion service: a closed address fails at once, and so does the jar
    download Beam tries without one when there is no network (on a networked machine that download would start)."""
    config = config_with(tmp_path, method="storage_write_api", expansion_service="127.0.0.1:1")
    with pytest.raises(RuntimeError, match="method storage_write_api: .*reached at 127.0.0.1:1.*expansion_service"):
        write_graph(config, {"streaming": True})


def test_a_configured_bigquery_sink_is_in_the_graph_create_pipeline_builds(trained, tmp_path):
    (tmp_path / "events.jsonl").write_text("")
    config = config_with(tmp_path, {"model.uri": str(trained.version.path)}, results=ALL_STREAMS)
    graph = create_pipeline(config, trained.version, event_rules(config, trained.version))
    assert tables_written(bigquery_writes(graph.pipeline)) == {
        "predictions": 1, "alerts": 1, "device_minutes": 1, "dead_letters": DEAD_LETTER_ORIGINS}


def test_views_keep_one_row_per_key_newest_first():
    settings = BigQuerySettings(dataset=DATASET, table_prefix="line_a_")
    alerts = view_sql(settings, ALERTS)
    assert alerts.startswith("CREATE OR REPLACE VIEW `iotml-test.plant_results.line_a_alerts_latest` AS\n"
                             "SELECT * FROM `iotml-test.plant_results.line_a_alerts`\n")
    assert alerts.endswith("QUALIFY ROW_NUMBER() OVER (PARTITION BY `incident_id` "
                           "ORDER BY `end_time` IS NULL, `n_events` DESC) = 1")
    assert "PARTITION BY `device_id`, `minute_start` ORDER BY `count` DESC" in view_sql(settings, DEVICE_MINUTES)
    assert "PARTITION BY `device_id`, `event_id`) = 1" in view_sql(settings, PREDICTIONS)
    assert "PARTITION BY `reason`, `received_at`, MD5(`payload`)) = 1" in view_sql(settings, DEAD_LETTERS)
    for table in TABLES.values():
        assert "WHERE TRUE\nQUALIFY ROW_NUMBER()" in view_sql(settings, table)


class _StandIn(BaseHTTPRequestHandler):
    """The BigQuery REST calls a streaming-inserts write makes (tables get/insert, tabledata.insertAll) and the
    OAuth token endpoint, recorded on the server."""

    def log_message(self, *args):
        pass

    def _answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        found = re.match(r"^/bigquery/v2/projects/[^/]+/datasets/[^/]+/tables/([^/?]+)", self.path)
        if found and found.group(1) in self.server.tables:
            return self._answer(200, self.server.tables[found.group(1)])
        self._answer(404, {"error": {"code": 404, "message": "Not found", "errors": [{"reason": "notFound"}]}})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/token"):
            return self._answer(200, {"access_token": "stand-in", "expires_in": 3600, "token_type": "Bearer"})
        self.server.authorized.append(self.headers.get("Authorization"))
        inserted = re.match(r"^/bigquery/v2/projects/[^/]+/datasets/[^/]+/tables/([^/?]+)/insertAll", self.path)
        if inserted:
            self.server.rows.extend((inserted.group(1), row) for row in json.loads(body)["rows"])
            return self._answer(200, {"kind": "bigquery#tableDataInsertAllResponse"})
        table = json.loads(body)
        self.server.tables[table["tableReference"]["tableId"]] = table
        self._answer(200, table)


@pytest.fixture
def bigquery_stand_in(tmp_path, monkeypatch):
    """A local BigQuery REST stand-in with Beam's clients pointed at it: google-cloud-bigquery (row inserts)
    through ``BIGQUERY_EMULATOR_HOST``, Beam's apitools client (tables) through its base URL, the only way it has;
    credentials a throwaway service account whose token endpoint is the stand-in."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.tables, server.rows, server.authorized = {}, [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    account = tmp_path / "service-account.json"
    account.write_text(json.dumps({
        "type": "service_account", "project_id": "iotml-test", "private_key_id": "1", "private_key": key.decode(),
        "client_email": "sink@iotml-test.iam.gserviceaccount.com", "client_id": "1", "token_uri": f"{url}/token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(account))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "iotml-test")
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", url)
    monkeypatch.setattr(BigqueryV2, "BASE_URL", f"{url}/bigquery/v2/")
    monkeypatch.setattr(auth._Credentials, "_credentials_init", False)  # Beam caches credentials per process
    yield server
    server.shutdown()
    server.server_close()


def test_streaming_inserts_create_the_tables_and_append_every_row_with_an_insert_id(bigquery_stand_in):
    settings = BigQuerySettings(dataset=DATASET, table_prefix="line_a_", partition_by_day=True)
    sink = BigQuerySink(settings, SinkContext(None, None))
    opened = Incident("d:1.000", "d", 1767225600.5, None, 0.8, 3, "open", "iot-anomaly", "3")
    results = device_results(["x"], [1.0], [opened])
    results.predictions = scored()
    letter = DeadLetter("bad_json", "line 1", "{broken", 1767225700.0)
    with beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER)) as pipeline:
        _ = pipeline | "Results" >> beam.Create([results]) | "Write" >> sink.write((PREDICTIONS, ALERTS))
        _ = pipeline | "Letters" >> beam.Create([letter]) | "WriteLetters" >> sink.write((DEAD_LETTERS,))

    for table in (PREDICTIONS, ALERTS, DEAD_LETTERS):
        created = bigquery_stand_in.tables[f"line_a_{table.name}"]
        assert created["tableReference"] == {"projectId": "iotml-test", "datasetId": "plant_results",
                                             "tableId": f"line_a_{table.name}"}
        assert created["schema"] == table_schema(table, partition_by_day=True)
        assert created["timePartitioning"] == {"type": "DAY", "field": DAY_COLUMN}
    received: dict[str, list] = {}
    for table_id, row in bigquery_stand_in.rows:
        received.setdefault(table_id, []).append(row["json"])
    assert {name: sorted(rows, key=json.dumps) for name, rows in received.items()} == {
        "line_a_predictions": sorted(bigquery_rows(results, PREDICTIONS, True), key=json.dumps),
        "line_a_alerts": bigquery_rows(results, ALERTS, True),
        "line_a_dead_letters": bigquery_rows(letter, DEAD_LETTERS, True)}
    insert_ids = [row["insertId"] for _, row in bigquery_stand_in.rows]
    assert len(set(insert_ids)) == len(insert_ids) == 4 and all(insert_ids)
    assert bigquery_stand_in.authorized and set(bigquery_stand_in.authorized) == {"Bearer stand-in"}
