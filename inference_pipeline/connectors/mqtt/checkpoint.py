"""Beam checkpoint marks of the MQTT source: an ``MqttCheckpointMark`` records the (epoch, packet id) acks of the
messages one bundle read, with the reader's record count, newest event time and watermark so a reader resumed from
it carries on; finalizing it PUBACKs those messages through the live session, and its coder is deterministic JSON
because Beam keys its reader cache on the encoded bytes."""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from apache_beam import coders
from apache_beam.io.unbounded_source import CheckpointMark

from inference_pipeline.connectors.mqtt.session import Ack, _Session

_LOGGER = logging.getLogger(__name__)


class MqttCheckpointMark(CheckpointMark):
    """What a bundle read: the acks to send when it commits, plus the reader's counters and watermark."""

    def __init__(
        self,
        client_id: str,
        token: str,
        acks: Sequence[Ack],
        records_read: int,
        max_event_time: float | None,
        watermark: float | None,
    ):
        self.client_id = client_id
        self.token = token
        self.acks = tuple(tuple(ack) for ack in acks)
        self.records_read = records_read
        self.max_event_time = max_event_time
        self.watermark = watermark

    def finalize_checkpoint(self) -> None:
        """PUBACK this bundle's messages (idempotent: acks are dropped once the session reconnected or closed)."""
        if not self.acks:
            return
        session = _Session.lookup(self.client_id, self.token)
        if session is None:
            _LOGGER.warning("MQTT session %s is gone; %d messages will be redelivered", self.client_id, len(self.acks))
            return
        session.ack(self.acks)
        self.acks = ()

    def to_json(self) -> bytes:
        acks = [list(ack) for ack in self.acks]
        fields = [self.client_id, self.token, acks, self.records_read, self.max_event_time, self.watermark]
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, encoded: bytes) -> "MqttCheckpointMark":
        client_id, token, acks, records_read, max_event_time, watermark = json.loads(encoded)
        return cls(client_id, token, [tuple(a) for a in acks], records_read, max_event_time, watermark)


class MqttCheckpointMarkCoder(coders.Coder):
    """Deterministic JSON coder for :class:`MqttCheckpointMark` (its bytes key Beam's reader cache)."""

    def encode(self, value: MqttCheckpointMark) -> bytes:
        return value.to_json()

    def decode(self, encoded: bytes) -> MqttCheckpointMark:
        return MqttCheckpointMark.from_json(encoded)

    def is_deterministic(self) -> bool:
        return True
