"""``kind: bigquery``: result streams appended to Google BigQuery tables through Beam's ``WriteToBigQuery``, one
table per stream (``<dataset>.<table_prefix><stream>``), created if needed from ``results.TABLES``.

- Schema: column types map once (``BIGQUERY_TYPES``); a nullable column is NULLABLE, the others REQUIRED. JSON
  columns are STRING holding the JSON text (``JSON_VALUE(sensor_contributions, '$.rpm')`` and ``PARSE_JSON`` read
  it): streaming inserts accept a string for either type, but Beam 2.77's file loads do not support the JSON type
  and its Storage Write API row conversion has no JSON mapping, so STRING works the same for all three methods.
- ``partition_by_day``: each row also gets ``event_date`` (DATE, UTC) of its table's event time (``EVENT_TIME``:
  a dead letter's arrival, an alert's start) and the table is created partitioned by it (not with
  ``storage_write_api``, whose Beam wrapper forwards no partitioning).
- Methods: ``streaming_inserts`` (``tabledata.insertAll``, rows queryable within seconds); ``file_loads`` (files
  under ``gcs_temp_location`` or the pipeline's ``temp_location``, one load job per table every
  ``triggering_frequency_s`` in a stream, one at the end of a bounded run); ``storage_write_api``: a cross-language
  transform whose Java expansion service Beam downloads from Maven at pipeline construction and runs with Java
  (``expansion_service``: the ``host:port`` of one already running). Without network the download fails at
  construction, which names the option.

BigQuery tables are append-only here: a row written again is another row. A table created by an earlier release
is not altered: it lacks the nullable columns the results schema gained since (``alerts.top_sensors``), and
BigQuery refuses rows naming an unknown field, so run ``add_columns_sql`` (``ALTER TABLE ... ADD COLUMN IF NOT
EXISTS`` of every nullable column) on it before a stream writes.

- ``streaming_inserts``: Beam gives each row an insert id before a reshuffle that Dataflow checkpoints, so an
  ``insertAll`` retried after a failure or timeout resends the same ids and BigQuery drops the copies, best effort
  (ids are remembered for about a minute).
- ``file_loads``: load jobs have deterministic ids, so a retried job loads its files once.
- ``storage_write_api``: exactly once per Beam's commits (its default, not at-least-once).
- Whatever the method, alerts (an incident's opening, then its closing) and per-minute summaries (running totals
  as the minute fills) are one row per update, not upserts, and a live stream restarted from its broker scores
  redelivered events again (this sink keeps no record to resume from, see ``base.Sink.restore``).

Analysts get one row per key from views: ``view_sql`` generates ``CREATE OR REPLACE VIEW <table>_latest AS SELECT
* FROM <table> WHERE TRUE QUALIFY ROW_NUMBER() OVER (PARTITION BY <key> ORDER BY <newest first>) = 1``, the key
being ``postgres.conflict_key`` (what PostgreSQL upserts on: an alert's incident id, a summary's device and minute,
a prediction's device and event id, a dead letter's reason, arrival and payload digest): the closed incident over
the open one, the fullest minute over partial ones, any one of identical copies.

Local testing: the google-cloud-bigquery client Beam inserts rows with honours ``BIGQUERY_EMULATOR_HOST``; the
apitools client Beam gets and creates tables with has a fixed base URL (``BigqueryV2.BASE_URL``) and no option to
change it, so a local stand-in of the REST API needs that class attribute patched (``test_bigquery.py`` does, and
runs a real streaming-inserts write against one).
"""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, Literal

import apache_beam as beam
from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from pydantic import Field, model_validator

from inference_pipeline.connectors.base import Sink, SinkContext, SinkSettings
from inference_pipeline.connectors.postgres import conflict_key
from inference_pipeline.results import Table

BIGQUERY_TYPES = {"text": "STRING", "real": "FLOAT64", "integer": "INT64", "json": "STRING"}
# The column each table's ``event_date`` (``partition_by_day``) is the UTC date of.
EVENT_TIME = {"predictions": "event_time", "shadow_predictions": "event_time", "alerts": "start_time",
              "dead_letters": "received_at", "device_minutes": "minute_start"}
DAY_COLUMN = "event_date"
# Newest first among a key's rows (``view_sql``); copies of an appended row are equal, any one will do.
_NEWEST_FIRST = {"alerts": "`end_time` IS NULL, `n_events` DESC", "device_minutes": "`count` DESC, `updated_at` DESC"}
DEFAULT_LOAD_FREQUENCY_S = 300.0


class BigQuerySettings(SinkSettings):
    """``dataset``: ``project:dataset`` or ``project.dataset``; ``table_prefix``: before each stream's name;
    ``method``: ``streaming_inserts``, ``file_loads`` or ``storage_write_api``; ``triggering_frequency_s``: in a
    stream, seconds between load jobs (``file_loads``, default 300: BigQuery limits load jobs per table per day) or
    commits (``storage_write_api``, default Beam's 5); ``gcs_temp_location``: where ``file_loads`` stages files
    (default: the pipeline's ``temp_location``); ``expansion_service``: ``host:port`` of a running Beam GCP
    expansion service for ``storage_write_api``; ``partition_by_day``: tables partitioned by ``event_date``."""

    kind: Literal["bigquery"] = "bigquery"
    dataset: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9][:.][A-Za-z0-9_]{1,1024}$")
    table_prefix: str = Field("", pattern=r"^[A-Za-z0-9_]*$")
    method: Literal["streaming_inserts", "file_loads", "storage_write_api"] = "streaming_inserts"
    triggering_frequency_s: float | None = Field(None, gt=0)
    gcs_temp_location: str | None = Field(None, pattern=r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$")
    expansion_service: str | None = Field(None, pattern=r"^[^:\s]+:\d{1,5}$")
    partition_by_day: bool = False

    @model_validator(mode="after")
    def _partitioning_is_forwarded(self) -> BigQuerySettings:
        if self.partition_by_day and self.method == "storage_write_api":
            raise ValueError("partition_by_day: not with method storage_write_api (Beam forwards no partitioning "
                             "to it): create the tables partitioned beforehand")
        return self

    @property
    def project(self) -> str:
        return self.dataset.replace(":", ".").split(".")[0]

    @property
    def dataset_id(self) -> str:
        return self.dataset.replace(":", ".").split(".")[1]

    def table_id(self, table: Table) -> str:
        return f"{self.table_prefix}{table.name}"


def table_schema(table: Table, partition_by_day: bool = False) -> dict[str, Any]:
    """The BigQuery schema of a result table (``WriteToBigQuery``'s dict form)."""
    fields = [{"name": c.name, "type": BIGQUERY_TYPES[c.type], "mode": "NULLABLE" if c.nullable else "REQUIRED"}
              for c in table.columns]
    if partition_by_day:
        fields.append({"name": DAY_COLUMN, "type": "DATE", "mode": "REQUIRED"})
    return {"fields": fields}


def bigquery_rows(value: Any, table: Table, partition_by_day: bool = False) -> list[dict[str, Any]]:
    """A result value's rows of ``table`` as BigQuery rows (JSON columns as their JSON text)."""
    rows = [dict(zip(table.column_names, row)) for row in table.rows(value)]
    if partition_by_day:
        for row in rows:
            moment = datetime.datetime.fromtimestamp(row[EVENT_TIME[table.name]], datetime.timezone.utc)
            row[DAY_COLUMN] = moment.date().isoformat()
    return rows


def view_sql(settings: BigQuerySettings, table: Table) -> str:
    """``CREATE OR REPLACE VIEW <table>_latest``: one row per key of ``table`` (see the module docstring)."""
    key = ", ".join(f"MD5(`{part[4:-1]}`)" if part.startswith("md5(") else f"`{part}`" for part in conflict_key(table))
    order = f" ORDER BY {_NEWEST_FIRST[table.name]}" if table.name in _NEWEST_FIRST else ""
    source = f"`{settings.project}.{settings.dataset_id}.{settings.table_id(table)}`"
    view = f"`{settings.project}.{settings.dataset_id}.{settings.table_id(table)}_latest`"
    return (f"CREATE OR REPLACE VIEW {view} AS\nSELECT * FROM {source}\nWHERE TRUE\n"
            f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {key}{order}) = 1")


def add_columns_sql(settings: BigQuerySettings, table: Table) -> str:
    """``ALTER TABLE``: a table of an earlier release gains the nullable columns added since (the others are there
    from the start; BigQuery only adds NULLABLE columns)."""
    columns = ",\n".join(f"ADD COLUMN IF NOT EXISTS `{c.name}` {BIGQUERY_TYPES[c.type]}"
                         for c in table.columns if c.nullable)
    return f"ALTER TABLE `{settings.project}.{settings.dataset_id}.{settings.table_id(table)}`\n{columns}"


class WriteToBigQueryTables(beam.PTransform):
    """Result values -> each table's rows -> one ``WriteToBigQuery`` per table (``Write<Table>``)."""

    def __init__(self, settings: BigQuerySettings, tables: Sequence[Table]):
        super().__init__()
        self._settings = settings
        self._tables = tuple(tables)

    def expand(self, values: beam.PCollection) -> beam.pvalue.PDone:
        settings, options = self._settings, values.pipeline.options
        streaming = bool(options.view_as(StandardOptions).streaming)
        if settings.method == "file_loads" and not (settings.gcs_temp_location or _on_gcs(options)):
            raise ValueError("gcs_temp_location: method file_loads stages files on Cloud Storage: set it "
                             "(gs://bucket/path) or pipeline_options.temp_location")
        for table in self._tables:
            label = "".join(part.title() for part in table.name.split("_"))
            rows = values | f"{label}Rows" >> beam.FlatMap(bigquery_rows, table, settings.partition_by_day)
            write = self._write(table, streaming)
            try:
                rows | f"Write{label}" >> write
            except Exception as exc:
                if settings.method != "storage_write_api":
                    raise
                where = f"reached at {settings.expansion_service}" if settings.expansion_service else "started"
                raise RuntimeError(
                    f"method storage_write_api: Beam's Java BigQuery expansion service could not be {where}: set "
                    f"expansion_service to the host:port of a running one, or use method streaming_inserts or "
                    f"file_loads ({' '.join(str(exc).split())})") from exc
        return beam.pvalue.PDone(values.pipeline)

    def _write(self, table: Table, streaming: bool) -> WriteToBigQuery:
        settings = self._settings
        frequency = None  # a bounded run loads or commits once, at its end
        if streaming and settings.method == "file_loads":
            frequency = settings.triggering_frequency_s or DEFAULT_LOAD_FREQUENCY_S
        elif streaming and settings.method == "storage_write_api":
            frequency = settings.triggering_frequency_s
        return WriteToBigQuery(
            table=settings.table_id(table), dataset=settings.dataset_id, project=settings.project,
            schema=table_schema(table, settings.partition_by_day), method=settings.method.upper(),
            create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=BigQueryDisposition.WRITE_APPEND,
            additional_bq_parameters={"timePartitioning": {"type": "DAY", "field": DAY_COLUMN}}
            if settings.partition_by_day else None,
            triggering_frequency=frequency, custom_gcs_temp_location=settings.gcs_temp_location,
            expansion_service=settings.expansion_service)


def _on_gcs(options: PipelineOptions) -> bool:
    return (options.view_as(GoogleCloudOptions).temp_location or "").startswith("gs://")


class BigQuerySink(Sink):
    def __init__(self, settings: BigQuerySettings, context: SinkContext):
        self._settings = settings

    def write(self, tables: Sequence[Table]) -> beam.PTransform:
        return WriteToBigQueryTables(self._settings, tables)
