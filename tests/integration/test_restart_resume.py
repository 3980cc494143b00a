"""A restarted stream continues where it stopped: `kill -9` while an incident is opening, then restart.

The device's window, its alerting state and the ids it predicted are committed with its predictions; the restarted
stream restores them, so the redelivered events are dropped as duplicates without losing the alert they caused, the
anomaly continues the same incident (no second one, no fresh warm-up), and the incident later closes. The alert has
exactly one row in SQLite; every copy on the alert topic carries the same incident id, and the copies of each status
agree.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from features.schema import event_payload
from tests.integration.test_mqtt_live import Stream, TopicMessages, kill, private_broker, wait_until  # noqa: F401
from training.simulate import SENSORS, simulate_fleet

pytestmark = pytest.mark.services

DEVICE = "pump-kill"


class Device:
    """One device publishing QoS 1 events with ids, at event times of its own (0.5 s apart)."""

    def __init__(self, stream: Stream):
        self._topic = f"{stream.prefix}/{DEVICE}/telemetry"
        normal = simulate_fleet(1, 600.0, seed=5, fault_rate=0)
        self._normal = normal[list(SENSORS)].to_numpy(dtype=np.float64)
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"iotml-it-dev-{stream.tag}")
        self._client.connect("127.0.0.1", stream.port)
        self._client.loop_start()
        self._t0 = time.time() - 250.0
        self.sent = 0

    def send(self, count: int, anomalous: bool) -> None:
        infos = []
        for _ in range(count):
            row = self._normal[self.sent % len(self._normal)] * (8.0 if anomalous else 1.0)
            payload = event_payload(DEVICE, self._t0 + 0.5 * self.sent, dict(zip(SENSORS, row.tolist())),
                                    f"{DEVICE}-{self.sent}")
            infos.append(self._client.publish(self._topic, payload, qos=1))
            self.sent += 1
        for info in infos:
            info.wait_for_publish(10)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _alert_rows(stream: Stream) -> list[tuple]:
    if not stream.db.exists():
        return []
    with sqlite3.connect(stream.db, timeout=30) as connection:
        try:
            return connection.execute("SELECT incident_id, status, kind FROM alerts").fetchall()
        except sqlite3.OperationalError:
            return []


def test_kill_while_an_incident_opens_then_restart_keeps_one_incident_that_later_closes(private_broker, trained,  # noqa: F811
                                                                                        tmp_path):
    stream = Stream(tmp_path, private_broker.port, trained.version.path, [DEVICE])
    stream.overrides.update({"alerting.open_after": 3, "alerting.close_after": 20})
    alerts = TopicMessages(stream, "alerts")
    device = Device(stream)
    first, first_log = stream.start()
    second = None
    try:
        window = trained.version.feature_spec.window
        device.send(window + 10, anomalous=False)
        wait_until(lambda: stream.predictions()[0] >= window + 10, 60, first, first_log)
        device.send(40, anomalous=True)
        deadline = time.monotonic() + 60
        while not _alert_rows(stream):  # SIGKILL as soon as the alert is committed, before its bundle is acknowledged
            assert time.monotonic() < deadline and first.poll() is None, first_log.read_text()[-3000:]
            time.sleep(0.002)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        at_kill = stream.predictions()[0]
        second, second_log = stream.start()
        wait_until(lambda: stream.predictions()[1] >= window + 50, 60, second, second_log)
        device.send(window + 40, anomalous=False)  # the window must forget the anomaly, then 20 normal close it
        totals = stream.drain_when_predicted(second, second_log, device.sent, settle_s=1)
    finally:
        kill(first)
        if second is not None:
            kill(second)
        device.close()
    time.sleep(1)
    alerts.close()
    rows, distinct = stream.predictions()
    copies = alerts.messages
    print(f"\nkill during incident: published {device.sent}, {at_kill} predicted at the kill, restart predicted "
          f"{totals['predictions']} and dropped {totals['duplicates']} copies; alert rows {_alert_rows(stream)}; "
          f"topic copies {[(m['incident_id'], m['status']) for m in copies]}")
    assert rows == distinct == device.sent
    assert [(incident, status) for incident, status, _ in _alert_rows(stream)] == [(copies[0]["incident_id"],
                                                                                    "closed")]
    assert {m["incident_id"] for m in copies} == {copies[0]["incident_id"]}
    assert [m["status"] for m in copies][-1] == "closed" and "open" in [m["status"] for m in copies]
    for status in ("open", "closed"):
        same = [{k: v for k, v in m.items() if k != "n_events"} for m in copies if m["status"] == status]
        assert all(copy == same[0] for copy in same)
