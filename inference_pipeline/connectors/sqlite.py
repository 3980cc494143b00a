"""``kind: sqlite``: results in one embedded SQLite database (predictions, alerts upserted per incident, dead
letters), tables derived from ``results.TABLES``.

A device batch's predictions, incident updates and the device's state after it (``device_state``) are committed in
one transaction, before the source acknowledges the batch; WAL with ``synchronous=FULL`` makes that commit survive a
power loss, not only a crash. A live stream restarted after a crash resumes from what was committed
(``SqliteRestore``: the ids already predicted, each device's window and alerting state). ``retention`` bounds the
disk: rows older than ``max_age_s`` and all but the newest ``max_rows`` of each table are deleted as the stream runs.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import apache_beam as beam
from pydantic import BaseModel, ConfigDict, Field

from inference_pipeline.connectors.base import Sink, SinkContext, SinkSettings
from inference_pipeline.results import DEVICE_STATE, PREDICTIONS, TABLES, DeviceSnapshot, Table

_SQL_TYPES = {"text": "TEXT", "real": "REAL", "integer": "INTEGER", "json": "TEXT"}
DEFAULT_FILE = "results.db"
# The column each table ages by (wall-clock seconds), for retention.
_AGE_COLUMN = {"predictions": "received_at", "dead_letters": "received_at", "alerts": "end_time",
               "device_state": "updated_at", "shadow_predictions": "received_at", "device_minutes": "updated_at"}


class RetentionSettings(BaseModel):
    """Rows kept: those younger than ``max_age_s`` (by arrival; alerts once closed) and at most the newest
    ``max_rows`` of each table (None: no limit). Checked every ``every_s`` seconds while the stream writes. Keep
    ``max_age_s`` above ``dedup.horizon_s``: a restart reads back the ids predicted within that horizon."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_age_s: float | None = Field(None, gt=0)
    max_rows: int | None = Field(None, ge=1)
    every_s: float = Field(60.0, gt=0)


class SqliteSettings(SinkSettings):
    """``path``: the database file (default ``<work_dir>/results.db``); ``retention``: see ``RetentionSettings``."""

    kind: Literal["sqlite"] = "sqlite"
    path: str | None = None
    retention: RetentionSettings = RetentionSettings()


def table_ddl(table: Table) -> str:
    """CREATE TABLE (and index) statements for one result table."""
    single = table.key_columns[0] if len(table.key_columns) == 1 else None
    columns = ", ".join(
        f"{c.name} {_SQL_TYPES[c.type]}{'' if c.nullable else ' NOT NULL'}{' PRIMARY KEY' if c.name == single else ''}"
        for c in table.columns)
    if len(table.key_columns) > 1:
        columns += f", PRIMARY KEY ({', '.join(table.key_columns)})"
    ddl = f"CREATE TABLE IF NOT EXISTS {table.name} ({columns});"
    if table.index:
        ddl += (f"\nCREATE INDEX IF NOT EXISTS {table.name}_{'_'.join(table.index)} "
                f"ON {table.name} ({', '.join(table.index)});")
    return ddl


ALL_TABLES = (*TABLES.values(), DEVICE_STATE)
SCHEMA = "\n".join(table_ddl(table) for table in ALL_TABLES)


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    """A database written by an earlier release gains the columns added since (nullable)."""
    for table in ALL_TABLES:
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table.name})")}
        for column in table.columns:
            if column.name not in present:
                connection.execute(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {_SQL_TYPES[column.type]}")


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating or upgrading if needed) the results database; commits are durable (WAL, synchronous=FULL).

    The connection may move between threads (a Beam worker process runs a step's bundles on its thread pool and
    tears the step down on its main thread), one thread at a time."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.executescript(SCHEMA)
    _add_missing_columns(connection)
    return connection


def insert_statement(table: Table) -> str:
    verb = "INSERT OR REPLACE" if table.key else "INSERT"
    names = table.column_names
    return f"{verb} INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


def prune(connection: sqlite3.Connection, retention: RetentionSettings, now: float) -> None:
    """Delete what ``retention`` no longer keeps (alerts only once closed)."""
    for table in ALL_TABLES:
        if retention.max_age_s is not None:
            connection.execute(f"DELETE FROM {table.name} WHERE {_AGE_COLUMN[table.name]} < ?",
                               (now - retention.max_age_s,))
        if retention.max_rows is not None:
            connection.execute(f"DELETE FROM {table.name} WHERE rowid <= (SELECT MAX(rowid) FROM {table.name}) - ?",
                               (retention.max_rows,))
    connection.commit()


class _WriteFn(beam.DoFn):
    """Writes a bundle's elements, the rows of every table, in one transaction at the end of the bundle: a batch's
    predictions, incident updates and device state are recorded together or not at all, before the source
    acknowledges the bundle's messages, and readable as soon as the bundle is done (one commit, so one fsync, per
    bundle rather than per device batch: the commits were a quarter of a live stream's CPU)."""

    def __init__(self, path: str, tables: Sequence[Table], retention: RetentionSettings):
        self._path = path
        self._tables = [(table, insert_statement(table)) for table in tables]
        self._retention = retention
        self._connection: sqlite3.Connection | None = None
        self._pruned_at = 0.0
        self._pending: list[Any] = []

    def setup(self) -> None:
        self._connection = connect(self._path)

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, element: Any) -> None:
        self._pending.append(element)

    def finish_bundle(self) -> None:
        if self._pending:
            with self._connection:  # one transaction: committed whole, or rolled back
                for table, statement in self._tables:
                    self._connection.executemany(statement, (row for element in self._pending
                                                             for row in table.rows(element)))
            self._pending = []
        now = time.time()
        if now - self._pruned_at >= self._retention.every_s and (self._retention.max_age_s or self._retention.max_rows):
            prune(self._connection, self._retention, now)
            self._pruned_at = now

    def teardown(self) -> None:
        if self._connection is not None:
            self._connection.close()


def write_tables(path: str | Path, tables: Sequence[Table], retention: RetentionSettings = RetentionSettings()
                 ) -> beam.PTransform:
    """Values -> their rows in each of ``tables`` (plus the device state beside predictions), one transaction per
    value, in the database at ``path``."""
    if PREDICTIONS in tables:
        tables = (*tables, DEVICE_STATE)
    return beam.ParDo(_WriteFn(str(path), tuple(tables), retention))


class SqliteRestore:
    """``results.Restore`` from the database: ids predicted (newest ``max_ids`` per device) and device snapshots.

    One read-only connection per thread, opened on first use (the object itself is pickled into the steps)."""

    def __init__(self, path: str | Path, max_ids: int):
        self._path = str(path)
        self._max_ids = max_ids
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"_path": self._path, "_max_ids": self._max_ids}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        if not Path(self._path).exists():
            return []
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = sqlite3.connect(self._path, timeout=30.0)
        try:
            return connection.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []

    def seen_ids(self, device_id: str, since: float) -> list[tuple[str, float]]:
        rows = self._query("SELECT event_id, event_time FROM predictions WHERE device_id = ? AND event_time >= ? "
                           "ORDER BY event_time DESC LIMIT ?", (device_id, since, self._max_ids))
        return rows[::-1]

    def snapshot(self, device_id: str) -> DeviceSnapshot | None:
        rows = self._query("SELECT state, updated_at FROM device_state WHERE device_id = ?", (device_id,))
        return DeviceSnapshot.from_json(device_id, rows[0][0], rows[0][1]) if rows else None


class SqliteSink(Sink):
    def __init__(self, settings: SqliteSettings, context: SinkContext):
        self.path = Path(settings.path).expanduser() if settings.path else context.work_path / DEFAULT_FILE
        self._retention = settings.retention

    def write(self, tables: Sequence[Table]) -> beam.PTransform:
        return write_tables(self.path, tables, self._retention)

    def restore(self, max_ids: int) -> SqliteRestore:
        return SqliteRestore(self.path, max_ids)


def results_path(sinks: Mapping[str, Any], work_path: Path) -> Path | None:
    """The database file of the first SQLite sink configured (None when there is none)."""
    for settings in sinks.values():
        if isinstance(settings, SqliteSettings):
            return SqliteSink(settings, SinkContext(work_path, None)).path
    return None
