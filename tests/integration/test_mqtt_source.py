"""MQTT source and sink against the local Mosquitto: exact delivery, and redelivery after a killed pipeline.

Run as a script, this file is the pipeline under test: MQTT -> sqlite (one row per delivered message).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import apache_beam as beam
import paho.mqtt.client as mqtt
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from features.schema import RawEvent, event_payload
from inference_pipeline.connectors.mqtt.checkpoint import MqttCheckpointMarkCoder
from inference_pipeline.connectors.mqtt.client import connect_in_background, create_client
from inference_pipeline.connectors.mqtt.settings import MqttSettings, ReadLimits
from inference_pipeline.connectors.mqtt.sink import PublishToMqtt
from inference_pipeline.connectors.mqtt.source import MqttSource, ReadFromMqtt

REPO = Path(__file__).resolve().parents[2]
FN_API_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
HOST, PORT = "127.0.0.1", 1883


class _SqliteSink(beam.DoFn):
    """Stores (event_id, received_at, pid) per element, committed at once: a row exists for every message the
    pipeline processed, acknowledged or not, so a kill shows up as duplicates rather than as lost rows."""

    def __init__(self, path: str, delay_s: float = 0.0):
        self._path = path
        self._delay_s = delay_s

    def setup(self) -> None:
        self._db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (event_id TEXT, received_at REAL, pid INTEGER)")

    def process(self, raws: list[RawEvent]) -> None:
        for raw in raws:
            time.sleep(self._delay_s)
            event_id = json.loads(raw.payload)["event_id"]
            self._db.execute("INSERT INTO seen VALUES (?, ?, ?)", (event_id, raw.received_at, os.getpid()))

    def teardown(self) -> None:
        self._db.close()


def run_pipeline(settings: MqttSettings, db: str, limits: ReadLimits, delay_s: float = 0.0) -> None:
    options = PipelineOptions(flags=[], runner=FN_API_RUNNER, streaming=True)
    with beam.Pipeline(options=options) as p:
        _ = p | ReadFromMqtt(settings, limits) | beam.ParDo(_SqliteSink(db, delay_s))


def _start_pipeline(settings: MqttSettings, db: Path, delay_s: float = 0.0, **limits: float) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--settings", settings.model_dump_json(), "--db", str(db)]
    cmd += ["--limits", json.dumps(limits), "--delay-s", str(delay_s)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(cmd, cwd=REPO, env=env)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def _rows(db: Path) -> tuple[int, int]:
    """(rows, distinct event ids) seen so far."""
    if not db.exists():
        return 0, 0
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM seen").fetchone()
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        con.close()


def _wait_rows(db: Path, at_least: int, timeout_s: float, proc: subprocess.Popen | None = None) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows, _ = _rows(db)
        if rows >= at_least:
            return rows
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"pipeline exited early with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"only {_rows(db)[0]} rows after {timeout_s} s, wanted {at_least}")


def _settings(tag: str) -> MqttSettings:
    return MqttSettings(host=HOST, port=PORT, topics=(f"iotml-test/{tag}/+/telemetry",), client_id=f"iotml-test-{tag}")


def _set_session(settings: MqttSettings, *, keep: bool) -> None:
    """Create the persistent session with its subscription (keep) or delete it (not keep)."""
    subscribed = threading.Event()
    client = create_client(settings, client_id=settings.client_id, clean_start=True, manual_ack=True)
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe([(t, 1) for t in settings.topics]) if keep else subscribed.set()
    connect_in_background(client, settings, clean_start=True, persistent=keep)
    assert subscribed.wait(10), "broker did not answer"
    client.disconnect()
    client.loop_stop()


def _left_in_session(settings: MqttSettings, wait_s: float = 1.5) -> int:
    """How many messages the broker still delivers to the session (unacknowledged or queued); acks none."""
    got: list[int] = []
    client = create_client(settings, client_id=settings.client_id, clean_start=False, manual_ack=True)
    client.on_message = lambda c, u, m: got.append(m.mid)
    connect_in_background(client, settings, clean_start=False, persistent=True)
    time.sleep(wait_s)
    client.disconnect()
    client.loop_stop()
    return len(got)


class _Publisher:
    def __init__(self, tag: str):
        self.tag = tag
        self.sent = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"iotml-test-pub-{tag}")
        self.client.max_inflight_messages_set(500)
        self.client.connect(HOST, PORT)
        self.client.loop_start()

    def publish(self, ids: range, rate: float | None = None) -> None:
        """Publish events ``ev-<i>`` at QoS 1 (at ``rate`` per second if given) and wait for the broker's acks."""
        infos = []
        start = time.monotonic()
        for n, i in enumerate(ids):
            device = f"pump-{i % 7:03d}"
            payload = event_payload(device, time.time(), {"flow_rate": float(i)}, event_id=f"ev-{i}")
            infos.append(self.client.publish(f"iotml-test/{self.tag}/{device}/telemetry", payload, qos=1))
            self.sent += 1
            if rate is not None:
                ahead = start + (n + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def tag():
    """A fresh topic tree and persistent session (subscribed, not yet connected), deleted afterwards."""
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError:
        pytest.skip(f"no MQTT broker on {HOST}:{PORT}")
    tag = uuid.uuid4().hex[:10]
    _set_session(_settings(tag), keep=True)
    yield tag
    _set_session(_settings(tag), keep=False)


@pytest.mark.services
def test_reader_watermark_checkpoint_and_stop(tag):
    settings = _settings(tag)
    publisher = _Publisher(tag)
    for i, ts in enumerate((1000.0, 900.0, 1100.0)):
        payload = event_payload("pump-001", ts, {"flow_rate": 1.0}, event_id=f"ev-{i}")
        publisher.client.publish(f"iotml-test/{tag}/pump-001/telemetry", payload, qos=1).wait_for_publish(10)
    publisher.close()
    limits = ReadLimits(poll_wait_s=1, batch_window_s=1, batch_wait_s=0.5, max_batch=2, max_lateness_s=10,
                        stop_after_idle_s=0.5, idle_watermark_after_s=None)
    reader = MqttSource(settings, limits).create_reader(None, None)
    try:
        seen = []
        for step in (reader.start, reader.advance):
            assert step()
            seen.append(([json.loads(e.payload)["ts"] for e in reader.get_current()], reader.get_current_timestamp(),
                         reader.get_watermark()))
        assert seen == [([1000.0, 900.0], Timestamp(900), Timestamp(990)), ([1100.0], Timestamp(1100), Timestamp(1090))]
        mark = reader.get_checkpoint_mark()
        coder = MqttCheckpointMarkCoder()
        assert coder.encode(coder.decode(coder.encode(mark))) == coder.encode(mark)
        assert len(mark.acks) == 3 and mark.records_read == 3
        deadline = time.monotonic() + 5
        while reader.get_watermark() != MAX_TIMESTAMP and time.monotonic() < deadline:
            assert not reader.advance()
        assert reader.get_watermark() == MAX_TIMESTAMP
        mark.finalize_checkpoint()
    finally:
        reader.close()
    assert _left_in_session(settings) == 0


@pytest.mark.services
def test_reads_every_message_exactly_once(tag, tmp_path):
    n = 2000
    settings, db = _settings(tag), tmp_path / "seen.db"
    publisher = _Publisher(tag)
    publisher.publish(range(0, 500))
    proc = _start_pipeline(settings, db, max_records=n, stop_after_idle_s=20)
    try:
        _wait_rows(db, 1, 40, proc)
        publisher.publish(range(500, n))
        assert proc.wait(timeout=40) == 0
    finally:
        publisher.close()
        _stop(proc)
    rows, distinct = _rows(db)
    left = _left_in_session(settings)
    print(f"\nexactly-once run: {rows} rows, {distinct} distinct of {n} published, {left} left unacknowledged")
    assert distinct == n
    assert rows == n
    assert left == 0


@pytest.mark.services
def test_kill_and_restart_redelivers_unacked(tag, tmp_path):
    first, second = 600, 400
    settings, db = _settings(tag), tmp_path / "seen.db"
    publisher = _Publisher(tag)
    proc = restarted = _start_pipeline(settings, db, delay_s=0.005, stop_after_idle_s=60)
    try:
        publisher.publish(range(0, 1))
        _wait_rows(db, 1, 40, proc)
        feeder = threading.Thread(target=publisher.publish, args=(range(1, first), 400.0))
        feeder.start()
        _wait_rows(db, 200, 20, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        published_at_kill, at_kill = publisher.sent, _rows(db)[0]
        feeder.join(timeout=30)
        publisher.publish(range(first, first + second))
        restarted = _start_pipeline(settings, db, stop_after_idle_s=3)
        assert restarted.wait(timeout=45) == 0
    finally:
        publisher.close()
        _stop(proc)
        _stop(restarted)
    con = sqlite3.connect(db)
    seen = {row[0] for row in con.execute("SELECT DISTINCT event_id FROM seen")}
    rows, distinct = _rows(db)
    first_pid = con.execute("SELECT pid FROM seen ORDER BY rowid LIMIT 1").fetchone()[0]
    after = con.execute("SELECT COUNT(*) FROM seen WHERE pid != ?", (first_pid,)).fetchone()[0]
    con.close()
    missing = {f"ev-{i}" for i in range(first + second)} - seen
    print(f"\nkill test: killed after {published_at_kill} published and {at_kill} processed; {after} rows after "
          f"restart, {rows} rows in all, {distinct} distinct of {first + second}, {rows - distinct} duplicates")
    assert not missing, f"{len(missing)} events never delivered, e.g. {sorted(missing)[:5]}"
    assert _left_in_session(settings) == 0


@pytest.mark.services
def test_publish_to_mqtt(tag):
    n, topic = 300, f"iotml-test/{tag}/out/alerts"
    got: list[bytes] = []
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"iotml-test-sub-{tag}")
    sub.on_connect = lambda c, *args: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda *args: ready.set()
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect(HOST, PORT)
    sub.loop_start()
    try:
        assert ready.wait(10)
        messages = [json.dumps({"alert": i}) for i in range(n)]
        with beam.Pipeline(options=PipelineOptions(flags=[], runner=FN_API_RUNNER)) as p:
            _ = p | beam.Create(messages) | PublishToMqtt(_settings(tag), topic)
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert sorted(json.loads(m)["alert"] for m in got) == list(range(n))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--limits", default="{}")
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args()
    settings = MqttSettings.model_validate_json(args.settings)
    run_pipeline(settings, args.db, ReadLimits(**json.loads(args.limits)), args.delay_s)


if __name__ == "__main__":
    main()
