"""Replay a file as an event stream: JSON lines are sent as they are; CSV/Parquet rows become event payloads.

``source.kind: replay``. Events keep their own event timestamps (the backfill path); ``rate`` paces emission in
events per second. A JSON line longer than the payload limit is read as its head and true size (``RawEvent.size``):
it can only become an oversize dead letter, so it is never held or decoded whole.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

import apache_beam as beam
import numpy as np
import pandas as pd
from pydantic import Field

from features.coders import RawEventBatch
from features.schema import EventRules, RawEvent, encode_events
from features.tables import read_table, table_format, timestamps_to_epoch
from inference_pipeline.connectors.base import ConnectorSettings, Source

_SKIP_CHUNK = 1 << 16

class ReplaySettings(ConnectorSettings):
    """``path``: the file to replay (JSON lines are sent as they are; CSV/Parquet rows become events, read with the
    column names given); ``batch_size``: events per batch; ``rate``: events per second (default: as fast as
    possible)."""

    kind: Literal["replay"] = "replay"
    path: str | None = None
    device_column: str = "device_id"
    timestamp_column: str = "ts"
    event_id_column: str | None = "event_id"
    batch_size: int = Field(2000, ge=1)
    rate: float | None = Field(None, gt=0)


def rows_to_payloads(frame: pd.DataFrame, device_column: str, timestamp_column: str, sensors: tuple[str, ...],
                     event_id_column: str | None) -> list[str]:
    """JSON event payloads for table rows (columns missing from the table fail here, naming the column)."""
    missing = [column for column in (device_column, timestamp_column, *sensors) if column not in frame.columns]
    if missing:
        raise ValueError(f"replay file lacks columns {missing}; it has {list(frame.columns)}")
    ids = frame[event_id_column].astype(str).tolist() if event_id_column in frame.columns else None
    return encode_events(frame[device_column].astype(str).tolist(), timestamps_to_epoch(frame[timestamp_column]),
                         frame[list(sensors)].to_numpy(dtype=np.float64), sensors, ids)


def _skip_line(handle: BinaryIO) -> int:
    """Read past the rest of a line in bounded chunks; its length in bytes, without the line end."""
    skipped = 0
    while chunk := handle.readline(_SKIP_CHUNK):
        if chunk.endswith(b"\n"):
            return skipped + len(chunk.rstrip(b"\r\n"))
        skipped += len(chunk)
    return skipped


def _jsonl_payloads(path: Path, limit: int | None) -> tuple[list[str], dict[int, int]]:
    """Non-blank JSON lines as text, each cut to ``limit`` bytes (the rest of a longer line is skipped, never held),
    and the true size in bytes of each cut line, by index."""
    payloads: list[str] = []
    sizes: dict[int, int] = {}
    with path.open("rb") as handle:
        readline, cap = handle.readline, -1 if limit is None else limit + 2
        while line := readline(cap):
            if limit is not None and len(line) == cap and not line.endswith(b"\n"):
                sizes[len(payloads)] = len(line) + _skip_line(handle)
                line = line[:limit]
            else:
                line = line.rstrip(b"\r\n")
                if limit is not None and len(line) > limit:
                    sizes[len(payloads)], line = len(line), line[:limit]
            if line.strip():
                payloads.append(line.decode("utf-8", errors="replace"))
            else:
                sizes.pop(len(payloads), None)
    return payloads, sizes


def read_bounded_payloads(path: str | Path, device_column: str, timestamp_column: str, sensors: tuple[str, ...],
                          event_id_column: str | None, max_payload_bytes: int | None = None
                          ) -> tuple[list[str], dict[int, int]]:
    """All payloads of a replay file, in file order: JSON lines raw (a malformed line stays as it is, to become a
    dead letter downstream), any other table (``read_table``) row by row. A JSON line over ``max_payload_bytes``
    is kept as its head: the second value maps its index to its true size in bytes."""
    path = Path(path)
    if table_format(path) == "jsonl":
        return _jsonl_payloads(path, max_payload_bytes)
    text_columns = [column for column in (device_column, event_id_column) if column]
    frame = read_table(path, text_columns=text_columns)
    return rows_to_payloads(frame, device_column, timestamp_column, sensors, event_id_column), {}


def read_payloads(path: str | Path, device_column: str, timestamp_column: str, sensors: tuple[str, ...],
                  event_id_column: str | None) -> list[str]:
    """All payloads of a replay file, whole, in file order (``read_bounded_payloads`` without a limit)."""
    return read_bounded_payloads(path, device_column, timestamp_column, sensors, event_id_column)[0]


class _ReplayFn(beam.DoFn):
    def __init__(self, read_args: tuple, batch_size: int, rate: float | None):
        self._read_args = read_args
        self._batch_size = batch_size
        self._rate = rate

    def process(self, path: str) -> Iterator[RawEventBatch]:
        payloads, sizes = read_bounded_payloads(path, *self._read_args)
        started = time.time()
        for start in range(0, len(payloads), self._batch_size):
            if self._rate:
                delay = started + start / self._rate - time.time()
                if delay > 0:
                    time.sleep(delay)
            now = time.time()
            batch = payloads[start:start + self._batch_size]
            if sizes:
                yield RawEventBatch(RawEvent(payload, now, sizes.get(start + i)) for i, payload in enumerate(batch))
            else:
                yield RawEventBatch(RawEvent(payload, now) for payload in batch)


class ReadReplay(beam.PTransform):
    """A replay file -> list[RawEvent] batches of ``batch_size``."""

    def __init__(self, path: str | Path, sensors: tuple[str, ...], device_column: str = "device_id",
                 timestamp_column: str = "ts", event_id_column: str | None = "event_id", batch_size: int = 2000,
                 rate: float | None = None, max_payload_bytes: int | None = None):
        super().__init__()
        if not Path(path).is_file():
            raise FileNotFoundError(f"source.path: replay file not found: {path}")
        self._path = str(path)
        self._fn = _ReplayFn((device_column, timestamp_column, tuple(sensors), event_id_column, max_payload_bytes),
                             batch_size, rate)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "File" >> beam.Create([self._path]) | "Emit" >> beam.ParDo(self._fn).with_output_types(
            RawEventBatch)


def replay_source(settings: ReplaySettings, rules: EventRules) -> Source:
    if not settings.path:
        raise ValueError("source.path: a replay source needs a file (set it or pass --source)")
    return Source(ReadReplay(settings.path, rules.sensors, settings.device_column, settings.timestamp_column,
                             settings.event_id_column, settings.batch_size, settings.rate, rules.max_payload_bytes))
