"""The MQTT connection of a source session, run in a child process.

paho parses each MQTT v5 message in Python (~150 us of interpreter time): in the pipeline's process that competed for
the interpreter lock with the pipeline itself. The child owns the paho client (connect, subscribe, reconnect with
backoff) and forwards deliveries in batches; the parent sends back what to acknowledge.

Pipes carry length-prefixed pickles. Parent -> child (stdin): the MqttSettings, then lists of (epoch, packet id)
to PUBACK, then None to disconnect. Child -> parent (stdout): lists of deliveries, (payload, received_at, packet id,
qos, epoch, size, dup), and a ``Reconnected`` marker at each CONNACK. ``epoch`` counts the child's CONNACKs: after a
reconnect the broker resends every unacknowledged message, so an ack of an older epoch is dropped (the resent copy
gets acknowledged instead). A payload over ``settings.max_payload_bytes`` is forwarded as its first
``max_payload_bytes`` bytes with its true ``size`` (it can only become an oversize dead letter), so an oversize
message never crosses the pipe or waits in a queue whole. The child exits when its stdin closes, so it never outlives
the pipeline process. All it writes (its log lines, which name the broker by host and port, and any traceback) goes
to stderr through ``redact.RedactingStream``: no password or credential-bearing URL.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any

import paho.mqtt.client as mqtt

from inference_pipeline.connectors.mqtt.client import connect_in_background, create_client
from inference_pipeline.connectors.mqtt.redact import RedactingStream
from inference_pipeline.connectors.mqtt.settings import MqttSettings

LOG = logging.getLogger(__name__)
# Deliveries are forwarded at most this often, in one frame (each frame wakes the pipeline's collector thread).
FORWARD_EVERY_S = 0.01
# Bytes the child holds before paho's network thread waits (and the broker, no longer read, keeps the rest).
MAX_PENDING_BYTES = 8 * 2**20
# What a queued message costs beyond its payload (its tuple or object, numbers and list slot), counted with it so
# that a backlog of tiny messages is bounded too.
MESSAGE_OVERHEAD_BYTES = 512
# The longest paho's network thread waits for room per message, so its acks and keepalive pings still go out.
MAX_BLOCK_S = 1.0
PASSWORD_ENV = "IOTML_MQTT_PASSWORD"
_LENGTH = struct.Struct("<I")

# (payload or its head, received_at, packet id, qos, epoch, the payload's true size in bytes, resent by the broker)
Delivery = tuple[bytes, float, int, int, int, int, bool]


@dataclasses.dataclass(frozen=True)
class Reconnected:
    """In the delivery stream at each CONNACK: the deliveries after it are of ``epoch``; ``session_present``: the
    broker kept the session, so it resends, with their packet ids, the messages of earlier epochs not yet acked."""

    epoch: int
    session_present: bool


def write_frame(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """The next value; EOFError when the other side is gone."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    size = _LENGTH.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def start_receiver(settings: MqttSettings, stderr: IO[bytes] | None = None) -> subprocess.Popen:
    """Start the child process for ``settings`` (sent over its stdin, so secrets never appear in its arguments);
    what it writes goes to ``stderr`` (default: this process's). It imports this module by name (not as
    ``__main__``), so the markers it pickles unpickle here."""
    child = subprocess.Popen([sys.executable, "-c", f"from {__name__} import main; main()"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=stderr)
    write_frame(child.stdin, settings)
    return child


class _Receiver:
    """The child's side: paho's network thread queues deliveries, a forwarder thread sends them in batches."""

    def __init__(self, settings: MqttSettings, out: IO[bytes]):
        self._settings = settings
        self._out = out
        self._cond = threading.Condition()
        self._pending: list[Delivery | Reconnected] = []
        self._pending_bytes = 0
        self._epoch = 0
        self._client = create_client(
            settings, client_id=settings.client_id, clean_start=settings.clean_start, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        threading.Thread(target=self._forward, name="mqtt-forward", daemon=True).start()
        connect_in_background(self._client, settings, clean_start=settings.clean_start, persistent=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            LOG.warning("MQTT connect refused for %s: %s", self._settings.client_id, reason_code)
            return
        with self._cond:
            self._epoch += 1
            self._pending.append(Reconnected(self._epoch, bool(flags.session_present)))
            self._cond.notify()
        LOG.info("MQTT %s connected (session present: %s, epoch %d)", self._settings.client_id,
                 flags.session_present, self._epoch)
        client.subscribe([(topic, self._settings.qos) for topic in self._settings.topics])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        LOG.warning("MQTT %s could not reach %s:%d; retrying", self._settings.client_id, self._settings.host,
                    self._settings.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code == "Session taken over":
            LOG.error("MQTT client id %s was taken over: two consumers share it", self._settings.client_id)
        elif reason_code != 0:
            LOG.warning("MQTT %s disconnected (%s); reconnecting", self._settings.client_id, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload, limit = message.payload, self._settings.max_payload_bytes
        head = payload if len(payload) <= limit else payload[:limit]
        with self._cond:
            # Backpressure: over budget, read the socket slower, never so slowly that acks and pings stop.
            deadline = time.monotonic() + MAX_BLOCK_S
            while self._pending_bytes > MAX_PENDING_BYTES and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            self._pending_bytes += len(head) + MESSAGE_OVERHEAD_BYTES
            self._pending.append((head, time.time(), message.mid, message.qos, self._epoch, len(payload),
                                  bool(message.dup)))
            self._cond.notify()

    def _forward(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
            time.sleep(FORWARD_EVERY_S)
            with self._cond:
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                self._cond.notify_all()
            try:
                write_frame(self._out, batch)
            except (BrokenPipeError, ValueError):
                os._exit(0)

    def ack(self, acks: list[tuple[int, int]]) -> None:
        with self._cond:
            epoch = self._epoch
        for ack_epoch, mid in acks:
            if ack_epoch == epoch:
                self._client.ack(mid, 1)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def main() -> None:
    commands, out = sys.stdin.buffer, sys.stdout.buffer
    settings: MqttSettings = read_frame(commands)
    secrets = (settings.resolved_password(), os.environ.get(PASSWORD_ENV))
    sys.stdout = sys.stderr = RedactingStream(sys.__stderr__, secrets)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    receiver = _Receiver(settings, out)
    while True:
        try:
            acks = read_frame(commands)
        except EOFError:
            break
        if acks is None:
            break
        receiver.ack(acks)
    receiver.close()
