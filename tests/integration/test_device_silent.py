"""A device that goes silent raises `device_silent` on a live stream even when nothing else arrives (the source's
idle ticks drive the roster), and its next event closes the incident; counts still reconcile."""
from __future__ import annotations

import sqlite3
import time

import pytest

from tests.integration.test_mqtt_live import Stream, TopicMessages, kill, shared_broker, wait_until  # noqa: F401
from tests.integration.test_restart_resume import DEVICE, Device

pytestmark = pytest.mark.services


def _silence_rows(stream: Stream) -> list[tuple]:
    with sqlite3.connect(stream.db, timeout=30) as connection:
        try:
            return connection.execute("SELECT incident_id, status, start_time, end_time FROM alerts "
                                      "WHERE kind = 'device_silent'").fetchall()
        except sqlite3.OperationalError:
            return []


def test_a_silent_device_raises_device_silent_and_its_next_event_closes_it(shared_broker, trained,  # noqa: F811
                                                                             tmp_path):
    stream = Stream(tmp_path, shared_broker[1], trained.version.path, [DEVICE])
    stream.overrides.update({"devices.silent_after_s": 2, "devices.check_every_s": 0.5, "devices.expire_after_s": 60,
                             "source.read.idle_tick_s": 0.5})
    alerts = TopicMessages(stream, "alerts")
    device = Device(stream)
    process, log = stream.start()
    try:
        device.send(20, anomalous=False)
        wait_until(lambda: stream.predictions()[0] >= 20, 60, process, log)
        quiet_since = time.monotonic()
        wait_until(lambda: _silence_rows(stream), 30, process, log)
        noticed_after = time.monotonic() - quiet_since
        device.send(5, anomalous=False)
        wait_until(lambda: [row[1] for row in _silence_rows(stream)] == ["closed"], 30, process, log)
        totals = stream.drain_when_predicted(process, log, device.sent)
    finally:
        kill(process)
        device.close()
    time.sleep(0.5)
    alerts.close()
    [(incident, status, start, end)] = _silence_rows(stream)
    print(f"\ndevice silent: noticed {noticed_after:.1f} s after the last event; row {incident} {start} -> {end}")
    assert noticed_after < 10
    assert status == "closed" and end > start
    assert [(m["incident_id"], m["status"]) for m in alerts.messages if m["kind"] == "device_silent"] == [
        (incident, "open"), (incident, "closed")]
    assert totals["predictions"] == device.sent and totals["dead_letters"] == 0
