"""``kind: sqlite``: results in one embedded SQLite database (predictions, alerts upserted per incident, dead
letters), tables derived from ``results.TABLES``. It can tell which events it already predicted (``predicted_ids``),
which the dedup step reads when a live stream restarts after a crash on the local runner."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import apache_beam as beam

from inference_pipeline.connectors.base import Sink, SinkContext, SinkSettings
from inference_pipeline.results import TABLES, Restore, Table

_SQL_TYPES = {"text": "TEXT", "real": "REAL", "integer": "INTEGER", "json": "TEXT"}
DEFAULT_FILE = "results.db"


class SqliteSettings(SinkSettings):
    """``path``: the database file (default ``<work_dir>/results.db``)."""

    kind: Literal["sqlite"] = "sqlite"
    path: str | None = None


def table_ddl(table: Table) -> str:
    """CREATE TABLE (and index) statements for one result table."""
    columns = ", ".join(
        f"{c.name} {_SQL_TYPES[c.type]}{'' if c.nullable else ' NOT NULL'}{' PRIMARY KEY' if c.name == table.key else ''}"
        for c in table.columns)
    ddl = f"CREATE TABLE IF NOT EXISTS {table.name} ({columns});"
    if table.index:
        ddl += (f"\nCREATE INDEX IF NOT EXISTS {table.name}_{'_'.join(table.index)} "
                f"ON {table.name} ({', '.join(table.index)});")
    return ddl


SCHEMA = "\n".join(table_ddl(table) for table in TABLES.values())


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) the results database."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), timeout=30.0)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(SCHEMA)
    return connection


def insert_statement(table: Table) -> str:
    verb = "INSERT OR REPLACE" if table.key else "INSERT"
    names = table.column_names
    return f"{verb} INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


class _WriteFn(beam.DoFn):
    """Writes each element's rows and commits, so results are readable as soon as they are produced."""

    def __init__(self, path: str, statement: str, to_rows: Callable[[Any], Iterable[tuple]]):
        self._path = path
        self._statement = statement
        self._to_rows = to_rows
        self._connection: sqlite3.Connection | None = None

    def setup(self) -> None:
        self._connection = connect(self._path)

    def process(self, element: Any) -> None:
        self._connection.executemany(self._statement, self._to_rows(element))
        self._connection.commit()

    def teardown(self) -> None:
        if self._connection is not None:
            self._connection.close()


def write_table(path: str | Path, table: Table) -> beam.PTransform:
    """Values of one result stream -> rows of its table in the database at ``path``."""
    return beam.ParDo(_WriteFn(str(path), insert_statement(table), table.rows))


class PredictedIds:
    """``Restore`` from the predictions table: the newest ``max_ids`` ids predicted for a device since a time
    (oldest first)."""

    def __init__(self, path: str | Path, max_ids: int):
        self._path = str(path)
        self._max_ids = max_ids

    def __call__(self, device_id: str, since: float) -> list[tuple[str, float]]:
        if not Path(self._path).exists():
            return []
        with sqlite3.connect(self._path, timeout=30.0) as connection:
            try:
                rows = connection.execute(
                    "SELECT event_id, event_time FROM predictions WHERE device_id = ? AND event_time >= ? "
                    "ORDER BY event_time DESC LIMIT ?", (device_id, since, self._max_ids)).fetchall()
            except sqlite3.OperationalError:
                return []
        return rows[::-1]


class SqliteSink(Sink):
    def __init__(self, settings: SqliteSettings, context: SinkContext):
        self.path = Path(settings.path).expanduser() if settings.path else context.work_path / DEFAULT_FILE

    def write(self, table: Table) -> beam.PTransform:
        return write_table(self.path, table)

    def predicted_ids(self, max_ids: int) -> Restore:
        return PredictedIds(self.path, max_ids)


def results_path(sinks: Mapping[str, Any], work_path: Path) -> Path | None:
    """The database file of the first SQLite sink configured (None when there is none)."""
    for settings in sinks.values():
        if isinstance(settings, SqliteSettings):
            return SqliteSink(settings, SinkContext(work_path, None)).path
    return None
