"""``kind: postgres``: results in a PostgreSQL database (predictions, alerts upserted per incident, dead letters, the
device state a restart resumes from), tables derived from ``results.TABLES`` in their own schema (``iotml``).

What the SQLite sink does, on a server: a device batch's predictions, incident updates and the device's state after
it are committed in one transaction, before the source acknowledges the batch, and a live stream restarted after a
crash resumes from what was committed (``PostgresRestore``).

- Schema: created or migrated when a writer starts (``CREATE SCHEMA/TABLE IF NOT EXISTS``, ``ADD COLUMN IF NOT
  EXISTS`` for the columns the results schema gained since, nullable as SQLite adds them), all from ``results.py``:
  column types map once (``_PG_TYPES``); JSON columns are ``jsonb``. Concurrent writers serialise the migration
  on an advisory lock.
- Idempotent writes: every table has a unique key, so a batch written twice (a retry after a lost connection whose
  commit may or may not have happened, a bundle the runner retries, a redelivered message) leaves one row each:
  predictions (and shadow predictions) by ``(device_id, event_id)``, ``ON CONFLICT DO NOTHING`` (the first
  prediction of an event stays); alerts by ``incident_id``, the device state by ``device_id`` and per-minute
  summaries by ``(device_id, minute_start)``, upserted (the last update wins, as SQLite's ``INSERT OR REPLACE``: an
  open incident is replaced by its closing, a minute's partial summary by a fuller one); dead letters, which
  have no id (their payload could not be read), by ``(reason, received_at, md5(payload))``: the same rejected
  message written again is one row, the same bad payload arriving again (another ``received_at``) is another
  occurrence and kept.
- Batched: a bundle's rows are one ``INSERT ... SELECT FROM unnest(<column arrays>)`` per table (one round trip
  each), committed as one transaction at the end of the bundle or when ``batch_rows`` rows are pending (a
  transaction always holds whole elements).
- Connection errors (server restarted, network lost, a deadlock): the transaction is rolled back, the connection
  reopened and the whole transaction run again, with exponential backoff up to ``retry.max_elapsed_s``; then the
  bundle fails (and the runner retries or stops it). Nothing is lost: the source acknowledges a batch only after
  its bundle committed.
- No secrets in config: ``dsn`` must not carry a password (rejected at load, without echoing it); the password comes
  from the ``password_env`` environment variable (read by the worker when it connects, never pickled with the
  pipeline) or libpq's own ``PGPASSWORD``/``~/.pgpass``; logs name host, port and database only.

Why our own code rather than Beam's ``WriteToJdbc``: in Beam 2.77 that is a cross-language transform whose Java
expansion service (a jar fetched from Maven at pipeline construction) cannot be downloaded here and needs a JVM on
every worker; it also has no ``ON CONFLICT`` upsert, no transaction spanning several tables, and no schema
migration. psycopg 3 is the well-maintained PostgreSQL driver (libpq underneath: every libpq connection option,
``PGPASSWORD``/``.pgpass``, TLS) and a bundle's writes are a few statements, so a ``DoFn`` is enough.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import apache_beam as beam
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference_pipeline.connectors.base import Sink, SinkContext, SinkSettings
from inference_pipeline.results import DEVICE_STATE, PREDICTIONS, TABLES, DeviceSnapshot, Table

log = logging.getLogger(__name__)

_PG_TYPES = {"text": "text", "real": "double precision", "integer": "bigint", "json": "jsonb"}
ALL_TABLES = (*TABLES.values(), DEVICE_STATE)
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
# Errors after which the transaction is run again on a fresh connection: the connection was lost or refused
# (OperationalError: server shut down or restarting, network), closed under us (InterfaceError), or the server
# rolled the transaction back (deadlock, serialisation failure).
RETRIABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.TransactionRollback)
_MISSING = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)
T = TypeVar("T")


class RetrySettings(BaseModel):
    """Backoff after a connection error: ``initial_s``, doubling up to ``max_s``; the write fails once retrying
    would go past ``max_elapsed_s`` (cover a database restart or failover)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_s: float = Field(0.2, gt=0)
    max_s: float = Field(5.0, gt=0)
    max_elapsed_s: float = Field(300.0, gt=0)


class PostgresSettings(SinkSettings):
    """``dsn``: a libpq connection string or URI, without a password; ``password_env``: the environment variable
    holding the password (else libpq's ``PGPASSWORD`` or ``~/.pgpass``, if any); ``schema``: the PostgreSQL schema
    the tables live in (created if missing); ``batch_rows``: rows at most per transaction (whole elements: one
    larger element is one transaction); ``connect_timeout_s``: per connection attempt; ``retry``: see
    ``RetrySettings``."""

    # Errors never show the input: a dsn wrongly carrying a password must not end up in a log.
    model_config = ConfigDict(hide_input_in_errors=True, populate_by_name=True)

    kind: Literal["postgres"] = "postgres"
    dsn: str = DEFAULT_DSN
    password_env: str | None = None
    db_schema: str = Field("iotml", alias="schema", min_length=1, max_length=63)
    batch_rows: int = Field(10_000, ge=1)
    connect_timeout_s: int = Field(10, ge=1)
    retry: RetrySettings = RetrySettings()

    @field_validator("dsn")
    @classmethod
    def _no_password_in_dsn(cls, dsn: str) -> str:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise ValueError("not a libpq connection string or postgresql:// URI") from None
        if params.get("password"):
            raise ValueError("must not carry a password: put it in the environment variable named by password_env "
                             "(or PGPASSWORD)")
        return dsn

    @property
    def where(self) -> str:
        """host:port/dbname, for logs (never the password)."""
        params = conninfo_to_dict(self.dsn)
        return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"


def _name(schema: str, table: Table | str) -> sql.Identifier:
    return sql.Identifier(schema, table if isinstance(table, str) else table.name)


def _column_type(table: Table, name: str) -> str:
    return next(_PG_TYPES[column.type] for column in table.columns if column.name == name)


def conflict_key(table: Table) -> tuple[str, ...]:
    """What identifies a row of ``table`` (columns; ``md5(payload)`` an expression): its upsert key, else
    (device_id, event_id) for a table of predictions, else (reason, received_at, md5(payload)) for dead letters."""
    names = set(table.column_names)
    if table.key:
        return table.key_columns
    if {"device_id", "event_id"} <= names:
        return ("device_id", "event_id")
    if {"reason", "received_at", "payload"} <= names:
        return ("reason", "received_at", "md5(payload)")
    raise ValueError(f"table {table.name}: no key to write it idempotently")


def _key_sql(table: Table) -> sql.Composable:
    parts = [sql.SQL("md5({})").format(sql.Identifier(part[4:-1])) if part.startswith("md5(") else sql.Identifier(part)
             for part in conflict_key(table)]
    return sql.SQL(", ").join(parts)


def table_ddl(table: Table, schema: str) -> list[sql.Composable]:
    """CREATE TABLE and its indexes (the unique key, the schema's index) for one result table."""
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(sql.Identifier(c.name), sql.SQL(_PG_TYPES[c.type]),
                                  sql.SQL("" if c.nullable else " NOT NULL"))
        for c in table.columns)
    statements = [
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(_name(schema, table), columns),
        sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(f"{table.name}_key"), _name(schema, table), _key_sql(table)),
    ]
    if table.index:
        statements.append(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(f"{table.name}_{'_'.join(table.index)}"), _name(schema, table),
            sql.SQL(", ").join(map(sql.Identifier, table.index))))
    return statements


def schema_ddl(schema: str) -> str:
    """The DDL of every table, as SQL text (for reading; ``ensure_schema`` runs it)."""
    statements = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))]
    statements += [statement for table in ALL_TABLES for statement in table_ddl(table, schema)]
    return ";\n".join(statement.as_string() for statement in statements) + ";"


def ensure_schema(connection: psycopg.Connection, schema: str) -> None:
    """Create the schema and tables if missing; tables of an earlier release gain the columns added since
    (nullable) and their keys. One transaction, serialised between writers starting together."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"iotml results schema {schema}",))
        connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for table in ALL_TABLES:
            connection.execute(table_ddl(table, schema)[0])
            present = {row[0] for row in connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (schema, table.name))}
            for column in table.columns:
                if column.name not in present:
                    connection.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        _name(schema, table), sql.Identifier(column.name), sql.SQL(_PG_TYPES[column.type])))
            for statement in table_ddl(table, schema)[1:]:
                connection.execute(statement)


def insert_statement(table: Table, schema: str) -> sql.Composed:
    """One INSERT of a batch of rows given as one array per column; a row already there (by ``conflict_key``) is
    kept (predictions, dead letters) or replaced (tables with an upsert key)."""
    names = table.column_names
    arrays = sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(_column_type(table, name))) for name in names)
    if table.key:
        updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name))
                                     for name in names if name not in table.key_columns)
        conflict = sql.SQL("DO UPDATE SET {}").format(updates)
    else:
        conflict = sql.SQL("DO NOTHING")
    return sql.SQL("INSERT INTO {} ({}) SELECT * FROM unnest({}) ON CONFLICT ({}) {}").format(
        _name(schema, table), sql.SQL(", ").join(map(sql.Identifier, names)), arrays, _key_sql(table), conflict)


def _clean(value: Any) -> Any:
    """PostgreSQL text cannot hold NUL (a rejected payload may): it becomes U+FFFD."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def _columns(table: Table, rows: list[tuple]) -> list[list[Any]]:
    """Rows -> one list per column; for an upsert table, only the last row of each key (one statement may not
    update a row twice; the last update is the one SQLite's INSERT OR REPLACE would leave)."""
    if table.key:
        positions = [table.column_names.index(name) for name in table.key_columns]
        rows = list({tuple(row[p] for p in positions): row for row in rows}.values())
    return [[_clean(value) for value in column] for column in zip(*rows)]


class Database:
    """One connection to the results database, (re)opened on demand: ``run(work)`` runs ``work(connection)`` in
    one transaction, and after a connection error opens a new connection and runs it again (backoff per
    ``retry``). Not shared between threads."""

    def __init__(self, settings: PostgresSettings, migrate: bool = False):
        self._settings = settings
        self._migrate = migrate
        self._connection: psycopg.Connection | None = None

    def _connect(self) -> psycopg.Connection:
        settings = self._settings
        options: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in conninfo_to_dict(settings.dsn):
            options["connect_timeout"] = settings.connect_timeout_s
        password = os.environ.get(settings.password_env) if settings.password_env else None
        if password:
            options["password"] = password
        connection = psycopg.connect(settings.dsn, **options)
        try:
            if self._migrate:
                ensure_schema(connection, settings.db_schema)
                self._migrate = False
        except BaseException:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # a broken connection may fail to close: it is dropped either way
                pass
            self._connection = None

    def run(self, work: Callable[[psycopg.Connection], T], what: str = "write") -> T:
        retry = self._settings.retry
        started = time.monotonic()
        delay = retry.initial_s
        attempt = 0
        while True:
            attempt += 1
            try:
                if self._connection is None or self._connection.closed:
                    self._connection = self._connect()
                    if attempt > 1:
                        log.info("postgres %s: reconnected after %d attempts", self._settings.where, attempt - 1)
                with self._connection.transaction():
                    return work(self._connection)
            except RETRIABLE as exc:
                self.close()
                pause = delay * (0.5 + random.random() / 2)
                if time.monotonic() - started + pause > retry.max_elapsed_s:
                    raise ConnectionError(f"postgres {self._settings.where}: {what} failed for "
                                          f"{time.monotonic() - started:.0f} s ({attempt} attempts): "
                                          f"{_one_line(exc)}") from exc
                log.warning("postgres %s: %s failed (%s); retrying in %.1f s", self._settings.where, what,
                            _one_line(exc), pause)
                time.sleep(pause)
                delay = min(delay * 2, retry.max_s)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class _WriteFn(beam.DoFn):
    """Writes a bundle's elements, the rows of every table, in one transaction at the end of the bundle (or
    whenever ``batch_rows`` rows are pending): a batch's predictions, incident updates and device state are
    recorded together or not at all, before the source acknowledges the bundle's messages."""

    def __init__(self, settings: PostgresSettings, tables: Sequence[Table]):
        self._settings = settings
        self._tables = tuple(tables)
        self._database: Database | None = None
        self._pending: list[list[tuple]] = []
        self._rows = 0

    def setup(self) -> None:
        self._statements = [insert_statement(table, self._settings.db_schema) for table in self._tables]
        self._database = Database(self._settings, migrate=True)
        self._database.run(lambda connection: None, "schema migration")  # connect and migrate now, not mid-bundle

    def start_bundle(self) -> None:
        self._pending = [[] for _ in self._tables]
        self._rows = 0

    def process(self, element: Any) -> None:
        for pending, table in zip(self._pending, self._tables):
            rows = table.rows(element)
            pending.extend(rows)
            self._rows += len(rows)
        if self._rows >= self._settings.batch_rows:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        batches = [(statement, _columns(table, rows))
                   for statement, table, rows in zip(self._statements, self._tables, self._pending) if rows]
        if batches:
            def write(connection: psycopg.Connection) -> None:
                with connection.cursor() as cursor:
                    for statement, columns in batches:
                        cursor.execute(statement, columns)
            self._database.run(write)
        self.start_bundle()

    def teardown(self) -> None:
        if self._database is not None:
            self._database.close()


def write_tables(settings: PostgresSettings, tables: Sequence[Table]) -> beam.PTransform:
    """Values -> their rows in each of ``tables`` (plus the device state beside predictions), one transaction per
    bundle, in the database of ``settings``."""
    if PREDICTIONS in tables:
        tables = (*tables, DEVICE_STATE)
    for table in tables:
        conflict_key(table)  # every table written has a key: fail at construction, not on a worker
    return beam.ParDo(_WriteFn(settings, tuple(tables)))


class PostgresRestore:
    """``results.Restore`` from the database: ids predicted (newest ``max_ids`` per device) and device snapshots;
    nothing while the tables do not exist yet. One connection per thread, opened on first use (the object itself
    is pickled into the steps); connection errors are retried as writes are."""

    def __init__(self, settings: PostgresSettings, max_ids: int):
        self._settings = settings
        self._max_ids = max_ids
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"_settings": self._settings, "_max_ids": self._max_ids}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _query(self, query: sql.Composable, args: tuple) -> list[tuple]:
        database = getattr(self._local, "database", None)
        if database is None:
            database = self._local.database = Database(self._settings)
        try:
            return database.run(lambda connection: connection.execute(query, args).fetchall(), "restore")
        except _MISSING:
            return []

    def seen_ids(self, device_id: str, since: float) -> list[tuple[str, float]]:
        query = sql.SQL("SELECT event_id, event_time FROM {} WHERE device_id = %s AND event_time >= %s "
                        "ORDER BY event_time DESC LIMIT %s").format(_name(self._settings.db_schema, PREDICTIONS))
        return self._query(query, (device_id, since, self._max_ids))[::-1]

    def snapshot(self, device_id: str) -> DeviceSnapshot | None:
        query = sql.SQL("SELECT state, updated_at FROM {} WHERE device_id = %s").format(
            _name(self._settings.db_schema, DEVICE_STATE))
        rows = self._query(query, (device_id,))
        return DeviceSnapshot.from_json(device_id, rows[0][0], rows[0][1]) if rows else None


class PostgresSink(Sink):
    def __init__(self, settings: PostgresSettings, context: SinkContext):
        self.settings = settings

    def write(self, tables: Sequence[Table]) -> beam.PTransform:
        return write_tables(self.settings, tables)

    def restore(self, max_ids: int) -> PostgresRestore:
        return PostgresRestore(self.settings, max_ids)
