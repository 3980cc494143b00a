"""The element coder of the MQTT source: a batch of RawEvents is written as a record count followed by each event's
arrival time, true size (0: the payload is whole), payload length and payload bytes, and the size estimate Beam
samples on every bundle is computed arithmetically rather than by encoding the batch again."""
from __future__ import annotations

import struct
from typing import Any

from apache_beam import coders, typehints

from features.schema import RawEvent


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

    def decode(self, encoded: bytes) -> list[RawEvent]:
        (count,), offset, events = struct.unpack_from("<I", encoded), 4, []
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
        return typehints.List[RawEvent]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))
