"""A 60,000-message backlog caught up across a broker restart: every event predicted once or dead-lettered, none twice.

The events are published at QoS 1 (``mosquitto_pub``, one per device: seconds for the whole backlog) while the stream
is down, so a private Mosquitto (persistence on, ``max_queued_messages`` above the backlog, as the MQTT source's
docstring asks) queues them in the stream's persistent session; `iotml stream` then catches up and the broker is
restarted (SIGTERM: it saves its state) in the middle of it. After the reconnect the broker resends every message not
yet acknowledged (with Mosquitto's backlog drain, far more than ``max_inflight``); the source tells the copies apart
(``connectors.mqtt.resends``), so none is processed twice and none is left unacknowledged in the broker.
"""
from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

from inference_pipeline.connectors.mqtt.settings import MqttSettings
from inference_pipeline.jobs.loadgen import Fleet
from tests.integration.test_mqtt_live import (  # noqa: F401 (fixtures)
    DEVICES,
    TOTALS,
    drain,
    Stream,
    fleet_devices,
    kill,
    private_broker,
    wait_until,
)
from tests.integration.test_mqtt_source import _left_in_session, _set_session

pytestmark = pytest.mark.services

BACKLOG = 60_000
SPAN_S = 30.0


def publish_backlog(stream: Stream, events: int) -> int:
    """Publish ``events`` distinct events of the simulated fleet, stamped over the last ``SPAN_S`` seconds, at QoS 1
    with one ``mosquitto_pub`` per device topic; the number the publishers sent."""
    fleet, start = Fleet(DEVICES, events, events / SPAN_S), time.time() - SPAN_S
    by_device: dict[str, list[str]] = defaultdict(list)
    for done in range(0, events, 100):
        for device, payload, _ in fleet.take(min(100, events - done), start + SPAN_S * done / events):
            by_device[device].append(payload)
    publishers = [subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(stream.port), "-q", "1", "-l",
                                    "-i", f"iotml-it-{stream.tag}-pub-{n}", "-t", f"{stream.prefix}/{device}/telemetry"],
                                   stdin=subprocess.PIPE) for n, device in enumerate(by_device)]
    for publisher, payloads in zip(publishers, by_device.values()):
        publisher.stdin.write(("\n".join(payloads) + "\n").encode())
        publisher.stdin.close()
    assert [publisher.wait(60) for publisher in publishers] == [0] * len(publishers)
    return sum(map(len, by_device.values()))


def accounted(db: Path) -> int:
    """Distinct event ids predicted or dead-lettered so far."""
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as connection:
        try:
            return connection.execute("SELECT COUNT(*) FROM (SELECT event_id FROM predictions UNION "
                                      "SELECT json_extract(payload, '$.event_id') FROM dead_letters)").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def sink_counts(db: Path) -> tuple[int, int, int]:
    """(prediction rows, distinct predicted event ids, dead letters) in the SQLite sink."""
    with sqlite3.connect(db, timeout=30) as connection:
        rows, distinct = connection.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM predictions").fetchone()
        dead = connection.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    return rows, distinct, dead


def test_a_backlog_caught_up_across_a_broker_restart_is_predicted_exactly_once(
        private_broker, trained, tmp_path, fleet_devices):  # noqa: F811 (fixtures)
    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto_pub is not installed")
    stream = Stream(tmp_path, private_broker.port, trained.version.path, fleet_devices)
    session = MqttSettings(port=private_broker.port, topics=(f"{stream.prefix}/+/telemetry",),
                           client_id=stream.overrides["source.mqtt.client_id"])
    _set_session(session, keep=True)
    began = time.monotonic()
    published_count = publish_backlog(stream, BACKLOG)
    published = time.monotonic()
    process, log = stream.start()
    try:
        connected = time.monotonic()
        wait_until(lambda: stream.predictions()[0] >= BACKLOG // 3, 90, process, log)
        private_broker.stop()
        at_stop = stream.predictions()[0]
        time.sleep(1)
        private_broker.start()
        wait_until(lambda: "epoch 2" in log.read_text(), 60, process, log)
        wait_until(lambda: accounted(stream.db) >= BACKLOG, 90, process, log)
        caught_up = time.monotonic()
        time.sleep(1)
        totals = drain(process, log, signal.SIGTERM)
    finally:
        kill(process)
    rows, distinct, dead = sink_counts(stream.db)
    left = _left_in_session(session)
    print(f"\nbacklog restart: published {published_count} in {published - began:.1f} s; stream connected after "
          f"{connected - published:.1f} s; broker restarted at {at_stop} predictions; caught up "
          f"{caught_up - connected:.1f} s after connecting ({BACKLOG / (caught_up - connected):.0f} events/s); "
          f"predictions {rows} ({distinct} distinct), dead letters {dead}, duplicates dropped {totals['duplicates']}, "
          f"{left} left unacknowledged in the broker; "
          f"{time.monotonic() - began:.1f} s in all")
    assert published_count == BACKLOG
    assert len(re.findall(r"connected \(session present: True", log.read_text())) >= 2
    assert distinct + dead == BACKLOG
    assert rows == distinct
    assert totals["predictions"] == rows and totals["dead_letters"] == dead
    assert left == 0
