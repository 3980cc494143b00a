"""A broker killed with SIGKILL (no clean shutdown) mid-stream: what survives, measured on a private Mosquitto set up
for durability as the README recommends (``DURABLE``).

Mosquitto 2.0 writes its persistence file only at an autosave or a clean shutdown. With ``autosave_on_changes true``
and ``autosave_interval 1`` it saves after every event-loop pass that queued a message or changed a session; it
reads one packet per connection per pass and sends that publisher its PUBACK within the pass, before the save. It
never saves for a message it hands straight to a connected subscriber (in flight to it). Measured here:

* messages queued for a session: a kill loses at most one acknowledged message per publishing connection, the last
  one it had acknowledged; publishing that one again after the reconnect closes the window. With the default
  autosave (every 30 minutes) a kill loses everything since the last save, the session and its subscription too;
* a live stream: it stays up through the outage, reconnects, and loses at most that last acknowledged event.

The publisher keeps events in order across the outage (``OrderedPublisher``), so none may become a dead letter.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from inference_pipeline.connectors.mqtt.client import (
    create_client,
)
from inference_pipeline.connectors.mqtt.settings import MqttSettings
from inference_pipeline.jobs.loadgen import Fleet, schedule
from tests.integration.test_mqtt_live import (
    DEVICES,
    drain,
    PrivateBroker,
    Stream,
    kill,
    wait_until,
)
from training.simulate import simulate_fleet

pytestmark = pytest.mark.services

# What the README recommends: save after every pass that queued a message (persistence itself is on in PrivateBroker).
DURABLE = "autosave_on_changes true\nautosave_interval 1\n"
# The measured bound for queued messages: acknowledged but lost per publishing connection.
QUEUED_LOSS_PER_CONNECTION = 1


class KillableBroker(PrivateBroker):
    """A private Mosquitto with extra settings that can also die the hard way (SIGKILL), keeping its persistence file."""

    def __init__(self, folder: Path, settings: str):
        super().__init__(folder)
        self.config.write_text(self.config.read_text() + settings)

    def kill(self) -> None:
        """kill -9: no clean shutdown, so no final save of the persistence file."""
        assert self.process is not None and self.process.poll() is None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def broker_factory(tmp_path):
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    brokers: list[KillableBroker] = []

    def make(settings: str) -> KillableBroker:
        folder = tmp_path / f"broker-{len(brokers)}"
        folder.mkdir()
        brokers.append(KillableBroker(folder, settings))
        brokers[-1].start()
        return brokers[-1]

    yield make
    for broker in brokers:
        broker.stop()


def _client(client_id: str, port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port, clean_start=False, properties=_session_properties())
    return client


def _session_properties() -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    return properties


def _session_messages(port: int, topic: str, wait_s: float) -> tuple[bool, set[tuple[str, str]]]:
    """Connect the persistent session ``sub`` (subscribing to ``topic``): (session present, the (topic, payload) of
    each message it receives within ``wait_s``)."""
    received: set[tuple[str, str]] = set()
    present: list[bool] = []
    subscribed = threading.Event()
    client = _client("sub", port)
    client.on_connect = lambda c, u, flags, *args: (present.append(flags.session_present), c.subscribe(topic, qos=1))
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_message = lambda c, u, message: received.add((message.topic, message.payload.decode()))
    client.loop_start()
    try:
        assert subscribed.wait(10), "the broker did not answer"
        time.sleep(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return present[0], received


def _publish_until_killed(broker: KillableBroker, connections: int, run_s: float) -> list[list[str]]:
    """``connections`` publishers send QoS 1 messages to the offline session until the broker is SIGKILLed after
    ``run_s``; the payloads each saw acknowledged, in the order it published them."""
    stop = threading.Event()
    clients = [_client(f"pub-{k}", broker.port) for k in range(connections)]
    sent: list[dict[int, str]] = [{} for _ in range(connections)]
    acked_mids: list[set[int]] = [set() for _ in range(connections)]

    def publish(k: int) -> None:
        clients[k].on_publish = lambda client, userdata, mid, *args: acked_mids[k].add(mid)
        n = 0
        while not stop.is_set():
            sent[k][clients[k].publish("kill/test", f"{k}-{n}", qos=1).mid] = f"{k}-{n}"
            n += 1
            if n % 50 == 0:
                time.sleep(0.005)

    for client in clients:
        client.loop_start()
    threads = [threading.Thread(target=publish, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    time.sleep(run_s)
    broker.kill()
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(10)
    for client in clients:
        client.loop_stop()
    return [[payload for mid, payload in sent[k].items() if mid in acked_mids[k]] for k in range(connections)]


@pytest.mark.parametrize("run_s", [0.7, 1.3])
def test_recommended_autosave_loses_at_most_the_last_acknowledged_message_per_connection(broker_factory, run_s):
    broker = broker_factory(DURABLE)
    _session_messages(broker.port, "kill/#", 0)
    acked = _publish_until_killed(broker, connections=3, run_s=run_s)
    broker.start()
    again = _client("pub-again", broker.port)
    again.loop_start()
    for payloads in acked:
        again.publish("kill/again", payloads[-1], qos=1).wait_for_publish(5)
    again.disconnect()
    again.loop_stop()
    present, received = _session_messages(broker.port, "kill/#", 2)
    delivered = {payload for topic, payload in received if topic == "kill/test"}
    lost = [set(payloads) - delivered for payloads in acked]
    print(f"\nSIGKILL after {run_s} s, autosave on changes: acknowledged {[len(a) for a in acked]} per connection, "
          f"lost {[len(gone) for gone in lost]}")
    assert present
    assert all(len(payloads) > 50 for payloads in acked)
    assert all(gone <= set(payloads[-QUEUED_LOSS_PER_CONNECTION:]) for gone, payloads in zip(lost, acked))
    assert all(set(payloads) <= {payload for _, payload in received} for payloads in acked), \
        "publishing the last acknowledged message again after the reconnect closes the window"


def test_default_autosave_loses_every_acknowledged_message_and_the_session(broker_factory):
    broker = broker_factory("")
    _session_messages(broker.port, "kill/#", 0)
    acked = _publish_until_killed(broker, connections=1, run_s=1.0)[0]
    broker.start()
    present, delivered = _session_messages(broker.port, "kill/#", 1)
    print(f"\nSIGKILL, default autosave (1800 s): {len(acked)} acknowledged, {len(delivered)} survived")
    assert len(acked) > 50
    assert not present and not delivered


class OrderedPublisher:
    """QoS 1 events of a simulated fleet, none lost and in order across a broker outage, as a device should publish:
    while disconnected it only buffers; on each reconnect it first publishes again, in order, every event without a
    PUBACK (the broker may have lost it), then the buffer. Copies are dropped by the pipeline's dedup.

    Each connection gets a new paho client: paho 2.x resends the messages it kept through an outage only once the
    CONNACK arrives but sends new ones as soon as the socket is open, so a newer event can overtake older ones of its
    device, which then become ``late`` dead letters; and its resends would double what this class publishes again.
    """

    def __init__(self, port: int, prefix: str):
        self._prefix = prefix
        self._settings = MqttSettings(port=port, client_id=f"iotml-kill-pub-{uuid.uuid4().hex[:8]}")
        self._lock = threading.Lock()
        self._down = threading.Event()
        self._up = True
        self._closed = False
        self.sent: dict[str, tuple[str, str]] = {}
        self._ids: dict[tuple[int, int], str] = {}
        self._acked: set[tuple[int, int]] = set()
        self._generation = 1
        self._client = self._connect(self._generation)
        threading.Thread(target=self._keep_connected, daemon=True).start()

    def _connect(self, generation: int) -> mqtt.Client:
        """A new connected client (OSError while the broker is down); acknowledgements are keyed by generation too,
        as packet ids restart with each client."""
        connected = threading.Event()
        client = create_client(self._settings, client_id=self._settings.client_id, clean_start=True, manual_ack=False)
        client.on_connect = lambda *args: connected.set()
        client.on_disconnect = lambda *args: (setattr(self, "_up", False), self._down.set())
        client.on_publish = lambda c, userdata, mid, *args: self._acked.add((generation, mid))
        client.connect(self._settings.host, self._settings.port, clean_start=True)
        client.loop_start()
        if not connected.wait(10):
            client.loop_stop()
            raise OSError("the broker sent no CONNACK")
        return client

    def _keep_connected(self) -> None:
        while True:
            self._down.wait()
            self._down.clear()
            if self._closed:
                return
            self._client.disconnect()
            self._client.loop_stop()
            client = None
            while client is None:
                try:
                    client = self._connect(self._generation + 1)
                except OSError:
                    time.sleep(0.2)
            with self._lock:
                self._client, self._generation, self._up = client, self._generation + 1, True
                acked = self.acked()
                for event_id in self.sent:
                    if event_id not in acked:
                        self._send(event_id)

    def publish(self, rate: float, seconds: float, seed: int) -> None:
        total = int(rate * seconds)
        fleet = Fleet(DEVICES, total, rate, seed)
        for due, _ in schedule(rate, total, time.time()):
            for device, payload, _ in fleet.take(due, time.time()):
                with self._lock:
                    event_id = json.loads(payload)["event_id"]
                    self.sent[event_id] = (f"{self._prefix}/{device}/telemetry", payload)
                    if self._up:
                        self._send(event_id)

    def _send(self, event_id: str) -> None:
        self._ids[self._generation, self._client.publish(*self.sent[event_id], qos=1).mid] = event_id

    def acked(self) -> set[str]:
        return {self._ids[key] for key in list(self._acked) if key in self._ids}

    def wait_acked(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while waiting := len(self.sent) - len(self.acked()):
            assert time.monotonic() < deadline, f"{waiting} events never acknowledged"
            time.sleep(0.1)

    def close(self) -> None:
        self._closed = True
        self._down.set()
        with self._lock:
            self._client.disconnect()
            self._client.loop_stop()


def outcomes(db: Path) -> tuple[list[str], int]:
    """(event ids of all prediction rows, dead-letter rows) in the stream's SQLite sink."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
        ids = [row[0] for row in connection.execute("SELECT event_id FROM predictions")]
        return ids, connection.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]


def test_broker_sigkill_mid_stream_the_stream_stays_up_and_loses_at_most_the_last_acknowledged_event(
        broker_factory, trained, tmp_path):
    broker = broker_factory(DURABLE)
    devices = sorted(simulate_fleet(DEVICES, 1.0)["device_id"].unique())
    stream = Stream(tmp_path, broker.port, trained.version.path, devices)
    process, log = stream.start()
    publisher = OrderedPublisher(broker.port, stream.prefix)
    try:
        publisher.publish(rate=200, seconds=1, seed=6)
        wait_until(lambda: stream.predictions()[1] >= len(publisher.sent), 60, process, log)
        feeder = threading.Thread(target=publisher.publish, kwargs={"rate": 1000, "seconds": 5, "seed": 7})
        feeder.start()
        wait_until(lambda: stream.predictions()[1] >= 1500, 30, process, log)
        broker.kill()
        time.sleep(0.3)
        acked = publisher.acked()
        last_acked = [event_id for event_id in publisher.sent if event_id in acked][-QUEUED_LOSS_PER_CONNECTION:]
        time.sleep(1.2)
        assert process.poll() is None, "the stream exited when the broker died"
        broker.start()
        wait_until(lambda: "epoch 2" in log.read_text(), 30, process, log)
        feeder.join(30)
        publisher.wait_acked(45)
        published = set(publisher.sent)
        settle(stream.db, len(published))
        assert process.poll() is None
        totals = drain(process, log, signal.SIGTERM)
    finally:
        publisher.close()
        kill(process)
    ids, dead_letters = outcomes(stream.db)
    lost = published - set(ids)
    print(f"\nbroker SIGKILL: published {len(published)} ({len(acked)} acknowledged before the kill), predictions "
          f"{len(ids)} ({len(set(ids))} distinct), dead letters {dead_letters}, duplicates dropped "
          f"{totals['duplicates']}, lost {sorted(lost)} (the last acknowledged before the kill: {last_acked})")
    assert "disconnected" in log.read_text()
    assert dead_letters == 0, "valid events in order per device became dead letters"
    assert len(ids) == len(set(ids)), "an event was predicted twice"
    assert set(ids) <= published and totals["predictions"] == len(ids)
    assert lost <= set(last_acked), "lost more than the broker's measured window"


def settle(db: Path, expected: int, quiet_s: float = 3.0, timeout_s: float = 60.0) -> None:
    """Wait until ``expected`` outcomes are in the sink, or its row count has not changed for ``quiet_s``; then one
    more second for late redelivered copies."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        ids, dead_letters = outcomes(db)
        if len(set(ids)) + dead_letters >= expected:
            break
        if len(ids) != last:
            last, since = len(ids), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.2)
    time.sleep(1)
