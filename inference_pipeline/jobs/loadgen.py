"""Load generator: publish the simulated fleet to an MQTT broker at a steady rate, as live JSON events.

Each event is stamped with the wall clock when it is published (its ``ts``, so latency is measured from publish),
carries a run-unique ``event_id`` and goes to ``<prefix>/<device_id>/telemetry`` at QoS 1. A ``malformed_fraction``
of the messages are corrupted copies (``training.malformed``: bad JSON, wrong types, oversize, ...) that the
pipeline must dead-letter; ``rate`` counts every message, malformed ones included.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from features.schema import encode_events
from inference_pipeline.connectors.mqtt.client import connect_and_wait, create_client
from inference_pipeline.connectors.mqtt.settings import MqttSettings
from training.malformed import KINDS, corrupt
from training.simulate import SENSORS, simulate_fleet

LOG = logging.getLogger(__name__)
TICK_S = 0.005


@dataclasses.dataclass
class PublishReport:
    """What was published (``run``: the tag in every event id), counts (malformed by reason), the time span, and
    how far publishing fell behind schedule."""

    run: str = ""
    published: int = 0
    valid: int = 0
    malformed: dict[str, int] = dataclasses.field(default_factory=dict)
    started: float = 0.0
    finished: float = 0.0
    max_lag_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.published / max(self.finished - self.started, 1e-9)


class Fleet:
    """The simulated fleet's readings in publishing order, served as payloads stamped with the time they are taken."""

    def __init__(self, devices: int, events: int, rate: float, seed: int = 7, fault_rate: float = 1.0,
                 sensors: Sequence[str] = SENSORS, malformed_fraction: float = 0.0, max_payload_bytes: int = 65536):
        steps = math.ceil(events / devices)
        frame = simulate_fleet(devices, steps * devices / rate, devices / rate, seed, time.time(), fault_rate)
        self.device_ids = frame["device_id"].astype(str).to_numpy()
        self.values = frame[list(sensors)].to_numpy(dtype=np.float64)
        self.sensors = tuple(sensors)
        self.run = f"{int(time.time() * 1000):x}"
        self._next = 0
        self._malformed_fraction = malformed_fraction
        self._taken = 0
        self._malformed_made = 0
        self._template: tuple[str, str, str | None] | None = None
        self._max_payload_bytes = max_payload_bytes

    def __len__(self) -> int:
        return len(self.device_ids)

    def take(self, n: int, now: float) -> list[tuple[str, str, str | None]]:
        """The next ``n`` messages as (device_id, payload, malformed reason or None), valid events stamped ``now``.

        Malformed copies (of this call's valid events, else of the last one) stand in for valid events so that
        ``malformed_fraction`` of all messages are malformed.
        """
        self._taken += n
        owed = math.floor(self._taken * self._malformed_fraction + 1e-9) - self._malformed_made
        bad = max(0, min(owed, n if self._template else n - 1))
        rows = slice(self._next, min(self._next + n - bad, len(self)))
        self._next = rows.stop
        devices = self.device_ids[rows].tolist()
        ids = [f"{device}-{self.run}-{i}" for device, i in zip(devices, range(rows.start, rows.stop))]
        payloads = encode_events(devices, [now] * len(devices), self.values[rows], self.sensors, ids)
        messages: list[tuple[str, str, str | None]] = [(d, p, None) for d, p in zip(devices, payloads)]
        if messages:
            self._template = messages[-1]
        for i in range(bad):
            device, payload, _ = messages[i % len(messages)] if messages else self._template
            kind = KINDS[self._malformed_made % len(KINDS)]
            self._malformed_made += 1
            messages.append((device, corrupt(payload, kind, self._max_payload_bytes), kind))
        return messages


def schedule(rate: float, total: int, started: float) -> Iterator[tuple[int, float]]:
    """Every ``TICK_S``: (messages due since the last tick, how late the oldest of them is), ``total`` in all."""
    sent = 0
    while sent < total:
        now = time.time()
        due = min(total, int((now - started) * rate)) - sent
        if due > 0:
            yield due, now - (started + sent / rate)
            sent += due
        time.sleep(TICK_S)


class Publisher:
    """A QoS 1 publisher that counts broker acknowledgements (reconnects on its own)."""

    def __init__(self, settings: MqttSettings):
        self._settings = settings
        self._acked = 0
        self._sent = 0
        self._cond = threading.Condition()
        self._client = create_client(settings, client_id=settings.client_id, clean_start=True, manual_ack=False)
        self._client.on_publish = self._on_publish
        connect_and_wait(self._client, settings)

    def _on_publish(self, *args: object) -> None:
        with self._cond:
            self._acked += 1
            self._cond.notify_all()

    def publish(self, topic: str, payload: str) -> None:
        self._client.publish(topic, payload, qos=1)
        self._sent += 1

    def wait_acked(self, timeout_s: float) -> int:
        """Wait until the broker acknowledged everything sent; returns how many are still unacknowledged."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._acked < self._sent and time.monotonic() < deadline:
                self._cond.wait(0.1)
            return self._sent - self._acked

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def publisher_settings(url: str) -> tuple[MqttSettings, str]:
    """Broker settings and topic prefix from ``mqtt[s]://[user[:password]@]HOST:PORT/PREFIX[?client_id=...]``."""
    query = dict(parse_qsl(urlsplit(url).query))
    default_id = {} if "client_id" in query else {"client_id": f"iotml-loadgen-{uuid.uuid4().hex[:8]}"}
    settings = MqttSettings.from_url(url, **default_id)
    prefix = settings.topics[0].strip("/") if settings.topics else "iotml"
    return settings, prefix


def publish_fleet(settings: MqttSettings, prefix: str, rate: float, devices: int, duration_s: float,
                  malformed_fraction: float = 0.0, seed: int = 7, fault_rate: float = 1.0,
                  sensors: Sequence[str] = SENSORS, max_payload_bytes: int = 65536) -> PublishReport:
    """Publish ``rate * duration_s`` messages of a ``devices``-strong simulated fleet at ``rate`` per second."""
    total = int(round(rate * duration_s))
    fleet = Fleet(devices, total, rate, seed, fault_rate, sensors, malformed_fraction, max_payload_bytes)
    publisher = Publisher(settings)
    report = PublishReport(run=fleet.run, started=time.time())
    try:
        for due, lag in schedule(rate, total, report.started):
            report.max_lag_s = max(report.max_lag_s, lag)
            for device, payload, reason in fleet.take(due, time.time()):
                publisher.publish(f"{prefix}/{device}/telemetry", payload)
                report.published += 1
                if reason is None:
                    report.valid += 1
                else:
                    report.malformed[reason] = report.malformed.get(reason, 0) + 1
        unacked = publisher.wait_acked(60.0)
    finally:
        publisher.close()
    report.finished = time.time()
    if unacked:
        raise RuntimeError(f"the broker did not acknowledge {unacked} of {report.published} messages")
    LOG.info("published %d messages (%d malformed) in %.1f s: %.0f/s, at most %.3f s behind schedule",
             report.published, report.published - report.valid, report.finished - report.started, report.rate,
             report.max_lag_s)
    return report
