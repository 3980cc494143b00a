"""Embedded SQLite sinks: predictions, alerts (upserted per incident) and dead letters in one database file."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import apache_beam as beam

from features.schema import DeadLetter
from inference_pipeline.alerts import ALERT_COLUMNS, Incident
from inference_pipeline.scoring import PREDICTION_COLUMNS, PredictionBatch

DEAD_LETTER_COLUMNS = ("reason", "detail", "payload", "received_at", "device_id")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    event_id TEXT NOT NULL, device_id TEXT NOT NULL, event_time REAL NOT NULL, received_at REAL NOT NULL,
    processing_time REAL NOT NULL, anomaly_score REAL NOT NULL, raw_score REAL NOT NULL, threshold REAL NOT NULL,
    is_anomaly INTEGER NOT NULL, window_fill INTEGER NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS predictions_device_time ON predictions (device_id, event_time);
CREATE TABLE IF NOT EXISTS alerts (
    incident_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, start_time REAL NOT NULL, end_time REAL,
    peak_score REAL NOT NULL, n_events INTEGER NOT NULL, status TEXT NOT NULL, model_name TEXT NOT NULL,
    model_version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    reason TEXT NOT NULL, detail TEXT NOT NULL, payload TEXT NOT NULL, received_at REAL NOT NULL, device_id TEXT);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) the results database."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(str(path), timeout=30.0)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(SCHEMA)
    return connection


def _insert(table: str, columns: tuple[str, ...], upsert: bool = False) -> str:
    verb = "INSERT OR REPLACE" if upsert else "INSERT"
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


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


def _prediction_rows(element: tuple[str, PredictionBatch]) -> list[tuple]:
    return element[1].rows()


def _alert_rows(incident: Incident) -> list[tuple]:
    return [incident.row()]


def _dead_letter_rows(letter: DeadLetter) -> list[tuple]:
    return [tuple(getattr(letter, column) for column in DEAD_LETTER_COLUMNS)]


def WritePredictions(path: str | Path) -> beam.PTransform:
    """(device_id, PredictionBatch) -> rows of ``predictions``."""
    return beam.ParDo(_WriteFn(str(path), _insert("predictions", PREDICTION_COLUMNS), _prediction_rows))


def WriteAlerts(path: str | Path) -> beam.PTransform:
    """Incident updates -> ``alerts``, one row per incident (the close replaces the open)."""
    return beam.ParDo(_WriteFn(str(path), _insert("alerts", ALERT_COLUMNS, upsert=True), _alert_rows))


def WriteDeadLetters(path: str | Path) -> beam.PTransform:
    """DeadLetter -> ``dead_letters``."""
    return beam.ParDo(_WriteFn(str(path), _insert("dead_letters", DEAD_LETTER_COLUMNS), _dead_letter_rows))
