"""Beam coders for the schema's batches, whose size estimates are arithmetic (equality and hashing are Beam's: by
class, as these coders hold no settings).

Beam samples the size of the elements each step outputs (for its byte-count metrics) by encoding them; with its
default pickling coder that meant pickling every event of a sampled raw batch (92,000 pickles, 7 % of a
200,000-event replay) and every device batch of a sampled RunInference or scaling batch (3,500 pickles, 3 %).

- ``RawEventsCoder``, for every source's output (declared as ``RawEventBatch``, a list of ``RawEvent``): a record
  count followed by each event's arrival time, true size (0: the payload is whole), payload length and payload bytes.
- ``ColumnarBatchCoder``, for ``EventBatch`` and ``FeatureBatch``: pickled (protocol 5), sized by their arrays.
"""
from __future__ import annotations

import dataclasses
import pickle
import struct
from typing import Any

import numpy as np
from apache_beam import coders, typehints

from features.schema import EventBatch, FeatureBatch, RawEvent


class RawEventBatch(list):
    """A source's batch of ``RawEvent``s (a plain list to every step; the type tells Beam its coder)."""


class RawEventsCoder(coders.Coder):
    """list[RawEvent] as (arrival time, true size or 0, length, payload) records; its size estimate is arithmetic.

    The runner samples the byte size of a source's output on every bundle; with a pickling coder that meant
    pickling every message of every batch again.
    """

    _HEAD = struct.Struct("<dII")

    def encode(self, value: list[RawEvent]) -> bytes:
        parts = [struct.pack("<I", len(value))]
        for event in value:
            payload = event.payload.encode() if isinstance(event.payload, str) else event.payload
            parts += [self._HEAD.pack(event.received_at, event.size or 0, len(payload)), payload]
        return b"".join(parts)

    def decode(self, encoded: bytes) -> RawEventBatch:
        (count,), offset, events = struct.unpack_from("<I", encoded), 4, RawEventBatch()
        for _ in range(count):
            received_at, true_size, size = self._HEAD.unpack_from(encoded, offset)
            offset += self._HEAD.size
            events.append(RawEvent(encoded[offset:offset + size], received_at, true_size or None))
            offset += size
        return events

    def estimate_size(self, value: list[RawEvent]) -> int:
        return 4 + sum(self._HEAD.size + len(event.payload) for event in value)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> Any:
        return RawEventBatch


def _estimated_bytes(value: Any) -> int:
    """Bytes of a dataclass's arrays (strings in object arrays counted at 32 bytes), nested dataclasses included."""
    if isinstance(value, np.ndarray):
        return value.nbytes + (32 * value.size if value.dtype == object else 0)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return 16 + sum(_estimated_bytes(getattr(value, field.name)) for field in dataclasses.fields(value))
    return 8


class ColumnarBatchCoder(coders.Coder):
    """A columnar batch (``EventBatch``, ``FeatureBatch``) pickled; its size estimate sums its arrays' bytes."""

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Any:
        return pickle.loads(encoded)

    def estimate_size(self, value: Any) -> int:
        return _estimated_bytes(value)

    def to_type_hint(self) -> Any:
        return typehints.Any


coders.registry.register_coder(RawEventBatch, RawEventsCoder)
for _batch_type in (EventBatch, FeatureBatch):
    coders.registry.register_coder(_batch_type, ColumnarBatchCoder)
