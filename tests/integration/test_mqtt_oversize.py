"""Oversize MQTT payloads on a real Mosquitto: the receiver child forwards only their head and true size, and a
stream fed fifty 5 MB messages writes fifty oversize dead letters without its memory growing by their size."""
from __future__ import annotations

import json
import sqlite3
import struct
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from inference_pipeline.connectors.mqtt.receiver import (
    Reconnected,
    start_receiver,
    write_frame,
)
from inference_pipeline.connectors.mqtt.settings import MqttSettings
from tests.integration.test_mqtt_live import (  # noqa: F401 (fixtures)
    Stream,
    drain,
    fleet_devices,
    kill,
    private_broker,
    shared_broker,
    wait_until,
)

pytestmark = pytest.mark.services

LIMIT = 65536
BIG = 5_000_000
COPIES = 50


def big_payload(device_id: str, size: int = BIG) -> bytes:
    """A valid event padded to ``size`` bytes: only its size makes it a dead letter."""
    head = json.dumps({"device_id": device_id, "ts": time.time(), "event_id": uuid.uuid4().hex,
                       "readings": {}, "pad": ""})[:-2]
    return (head + '"' + "x" * (size - len(head) - 3) + '"}').encode()


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"iotml-it-big-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


class FrameReader:
    """Reads the receiver child's frames in a thread, counting the bytes that cross the pipe."""

    def __init__(self, stream):
        self.items: list = []
        self.frame_bytes: list[int] = []
        self._stream = stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        import pickle

        while (head := self._stream.read(4)) and len(head) == 4:
            data = self._stream.read(struct.unpack("<I", head)[0])
            self.frame_bytes.append(len(head) + len(data))
            self.items.extend(pickle.loads(data))

    def deliveries(self) -> list[tuple]:
        return [item for item in self.items if not isinstance(item, Reconnected)]


def test_the_receiver_forwards_only_the_head_and_size_of_an_oversize_payload(shared_broker):  # noqa: F811
    tag = uuid.uuid4().hex[:10]
    settings = MqttSettings(port=shared_broker[1], topics=(f"iotml-it/{tag}/+/telemetry",),
                            client_id=f"iotml-it-recv-{tag}", session_expiry_s=0, max_payload_bytes=LIMIT)
    child = start_receiver(settings)
    frames = FrameReader(child.stdout)
    client = publisher(shared_broker[1])
    try:
        wait_until(lambda: any(isinstance(item, Reconnected) for item in frames.items), 20)
        time.sleep(0.5)
        small, big = b'{"device_id": "d"}', big_payload("d")
        for payload in (small, big, small):
            client.publish(f"iotml-it/{tag}/d/telemetry", payload, qos=1).wait_for_publish(30)
        wait_until(lambda: len(frames.deliveries()) >= 3, 30)
    finally:
        client.disconnect()
        client.loop_stop()
        write_frame(child.stdin, None)
        child.stdin.close()
        child.wait(10)
    got = [(payload, size) for payload, _, _, _, _, size, _ in frames.deliveries()]
    print(f"\nreceiver: {len(frames.frame_bytes)} frames, {sum(frames.frame_bytes)} bytes in all for a "
          f"{BIG}-byte payload and two small ones")
    assert got == [(small, len(small)), (big[:LIMIT], BIG), (small, len(small))]
    assert sum(frames.frame_bytes) < LIMIT + 4096


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += int(status.split("VmRSS:")[1].split()[0]) * 1024
        pending += map(int, children)
    return total


def oversize_letters(db: Path) -> list[tuple[str, str, int]]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as connection:
        try:
            return connection.execute(
                "SELECT reason, detail, length(payload) FROM dead_letters WHERE reason = 'oversize'").fetchall()
        except sqlite3.OperationalError:
            return []


def test_fifty_5mb_messages_are_fifty_oversize_dead_letters_and_memory_stays_flat(
        private_broker, trained, tmp_path, fleet_devices):  # noqa: F811 (fixtures)
    stream = Stream(tmp_path, private_broker.port, trained.version.path, fleet_devices)
    process, log = stream.start()
    client = publisher(private_broker.port)
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(tree_rss(process.pid))
            time.sleep(0.05)

    try:
        stream.warm_up(process, log)
        time.sleep(1)
        baseline = tree_rss(process.pid)
        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        for _ in range(COPIES):
            client.publish(f"{stream.prefix}/{fleet_devices[0]}/telemetry", big_payload(fleet_devices[0]),
                           qos=1).wait_for_publish(60)
        wait_until(lambda: len(oversize_letters(stream.db)) >= COPIES, 90, process, log)
        elapsed = time.monotonic() - started
        time.sleep(1)
        done.set()
        sampler.join()
        totals = drain(process, log)
    finally:
        done.set()
        client.disconnect()
        client.loop_stop()
        kill(process)
    letters = oversize_letters(stream.db)
    growth = max(samples) - baseline
    print(f"\noversize: {COPIES} x {BIG} bytes -> {len(letters)} oversize dead letters in {elapsed:.1f} s; stream "
          f"RSS (with its receiver) {baseline / 2**20:.0f} MiB before, peak {max(samples) / 2**20:.0f} MiB "
          f"(+{growth / 2**20:.0f} MiB; whole payloads would be {COPIES * BIG / 2**20:.0f} MiB)")
    assert len(letters) == COPIES and totals["dead_letters"] == COPIES
    assert {detail for _, detail, _ in letters} == {f"payload of {BIG} bytes exceeds {LIMIT}"}
    assert all(length <= LIMIT for _, _, length in letters)
    assert growth < 100 * 2**20
