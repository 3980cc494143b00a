"""The one MQTT connection a client id has in this process, shared by the successive readers that use it: the
connection runs in a receiver child process, a collector thread here queues the deliveries it forwards, readers
``take`` batches from that queue and ``give_back`` what they read but never checkpointed, committed bundles send
their PUBACKs through ``ack``, and ``release`` disconnects once no reader holds the session and no ack is pending
(or after a linger).

After a reconnect to a session the broker kept, the broker's resends of what was not yet acknowledged are told
apart from new messages (``resends``): none is processed twice."""
from __future__ import annotations

import collections
import dataclasses
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence

from inference_pipeline.connectors.mqtt.receiver import (
    MESSAGE_OVERHEAD_BYTES, Reconnected, read_frame, start_receiver, write_frame)
from inference_pipeline.connectors.mqtt.resends import Ack, Resends
from inference_pipeline.connectors.mqtt.settings import MqttSettings, ReadLimits

_LOGGER = logging.getLogger(__name__)
# Bytes queued here (``_Delivery.held_bytes``) before the collector stops reading the receiver's pipe: with the
# receiver's own budget, what a backlog costs this process is bounded (the broker keeps the rest; Mosquitto pushes a
# whole queued backlog).
MAX_QUEUED_BYTES = 16 * 2**20


@dataclasses.dataclass
class _Delivery:
    """One message as the receiver forwarded it (see ``receiver.Delivery``): ``payload`` is only its head when
    ``size`` (the true size in bytes) exceeds the payload limit. ``epoch`` moves on when the broker resends it."""

    payload: bytes
    received_at: float
    mid: int
    qos: int
    epoch: int
    size: int
    dup: bool

    @property
    def truncated(self) -> bool:
        return self.size > len(self.payload)

    @property
    def held_bytes(self) -> int:
        """What it costs queued: its payload and the object around it."""
        return len(self.payload) + MESSAGE_OVERHEAD_BYTES


def _head(deliveries: Sequence[_Delivery], limit: int, max_bytes: int) -> list[_Delivery]:
    """The longest prefix of ``deliveries`` within ``limit`` messages and ``max_bytes`` of payload (at least one)."""
    head: list[_Delivery] = []
    size = 0
    for delivery in deliveries[:limit]:
        size += len(delivery.payload)
        if head and size > max_bytes:
            break
        head.append(delivery)
    return head


class _Session:
    """The one connection of a client id in this process, shared by successive readers.

    The connection itself lives in a receiver process (``receiver``); a collector thread here queues what it
    forwards. Acks go back to it, and it drops those of an older connection epoch.
    """

    _registry: dict[str, "_Session"] = {}
    _registry_lock = threading.Lock()

    def __init__(self, settings: MqttSettings):
        self.settings = settings
        self.token = uuid.uuid4().hex
        self._cond = threading.Condition()
        self._queue: collections.deque[_Delivery] = collections.deque()
        self._queued_bytes = 0
        self._returned: list[_Delivery] = []
        self._resends = Resends()
        self._refs = 0
        self._unacked = 0
        self._closing = False
        self._closed = False
        self._receiver_gone: str | None = None
        self._receiver = start_receiver(settings)
        self._write_lock = threading.Lock()
        threading.Thread(target=self._collect, name=f"mqtt-collect-{settings.client_id}", daemon=True).start()

    @classmethod
    def acquire(cls, settings: MqttSettings) -> "_Session":
        """The live session for ``settings.client_id``, opened if needed (two clients of one id evict each other)."""
        with cls._registry_lock:
            session = cls._registry.get(settings.client_id)
            if session is None or session._closed:
                session = cls(settings)
                cls._registry[settings.client_id] = session
            elif session.settings != settings:
                _LOGGER.warning("MQTT client id %s is already open with other settings; reusing it", settings.client_id)
            with session._cond:
                session._refs += 1
                session._closing = False
            return session

    @classmethod
    def lookup(cls, client_id: str, token: str) -> "_Session | None":
        with cls._registry_lock:
            session = cls._registry.get(client_id)
        return session if session is not None and session.token == token else None

    def _collect(self) -> None:
        """Queue what the receiver forwards; when it exits or its pipe carries something unreadable, record why, so
        readers fail with that reason instead of waiting forever."""
        problem = None
        while problem is None:
            with self._cond:  # backpressure: past the budget, leave the rest in the pipe (then in the broker)
                while self._queued_bytes > MAX_QUEUED_BYTES and not self._closed:
                    self._cond.wait(1.0)
            try:
                items = [item if isinstance(item, Reconnected) else _Delivery(*item)
                         for item in read_frame(self._receiver.stdout)]
            except EOFError:
                problem = f"exited (code {self._receiver.wait()})"
            except Exception as exc:  # a garbled pipe: whatever it raises, stop the receiver rather than stall
                self._receiver.kill()
                problem = f"sent an unreadable frame ({type(exc).__name__}: {exc}) and was stopped"
            else:
                with self._cond:
                    acks = self._admit(items)
                    self._cond.notify_all()
                if acks:
                    self._send(acks)
        with self._cond:
            self._receiver_gone = problem
            self._cond.notify_all()
        if not self._closed:
            _LOGGER.error("MQTT receiver of %s %s", self.settings.client_id, problem)

    def _admit(self, items: list[_Delivery | Reconnected]) -> list[Ack]:
        """With the lock held: queue what the receiver forwarded, less the resends it need not see again; the acks
        to send at once."""
        acks: list[Ack] = []
        for item in items:
            if isinstance(item, Reconnected):
                self._resends.reconnected(item.epoch, item.session_present)
                continue
            queue_it, now = self._resends.admit(item)
            acks += now
            if queue_it:
                self._queue.append(item)
                self._queued_bytes += item.held_bytes
        return acks

    def _send(self, acks: list[Ack]) -> None:
        try:
            with self._write_lock:
                write_frame(self._receiver.stdin, acks)
        except (BrokenPipeError, ValueError):
            _LOGGER.warning("MQTT receiver of %s is gone; %d messages will be redelivered", self.settings.client_id,
                            len(acks))

    def _wait_for_delivery(self, until: float) -> bool:
        """With the lock held: whether a delivery is queued by ``until`` (monotonic seconds)."""
        while not self._queue:
            if self._receiver_gone:
                raise ConnectionError(f"MQTT receiver of {self.settings.client_id} {self._receiver_gone}")
            left = until - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(left)
        return True

    def take(self, timeout: float, limit: int, window_s: float, gap_s: float,
             max_bytes: int = ReadLimits.max_batch_bytes) -> list[_Delivery]:
        """Up to ``limit`` deliveries and, past the first, ``max_bytes`` of payload (redeliveries of failed readers
        first): waits ``timeout`` seconds for the first, then gathers for up to ``window_s`` more, stopping early
        after ``gap_s`` without a message."""
        with self._cond:
            taken = _head(self._returned, limit, max_bytes)
            del self._returned[:len(taken)]
            if not taken and not self._wait_for_delivery(time.monotonic() + timeout):
                return []
            window_end = time.monotonic() + window_s
            fresh: list[_Delivery] = []
            size, full = sum(len(delivery.payload) for delivery in taken), False
            while True:
                while self._queue and len(taken) + len(fresh) < limit and not full:
                    next_size = len(self._queue[0].payload)
                    full = bool(taken or fresh) and size + next_size > max_bytes
                    if not full:
                        fresh.append(self._queue.popleft())
                        size += next_size
                        self._queued_bytes -= fresh[-1].held_bytes
                self._cond.notify_all()
                if full or len(taken) + len(fresh) >= limit:
                    break
                if not self._wait_for_delivery(min(time.monotonic() + gap_s, window_end)):
                    break
            self._unacked += sum(1 for delivery in fresh if delivery.qos)
        return taken + fresh

    def give_back(self, deliveries: Sequence[_Delivery]) -> None:
        """Re-offer deliveries that a reader read but never checkpointed (its bundle failed)."""
        with self._cond:
            self._returned[:0] = deliveries

    def ack(self, acks: Sequence[Ack]) -> None:
        """PUBACK these messages, each in its delivery's current epoch (the receiver skips those of an earlier
        connection: the broker resends them)."""
        with self._cond:
            sent = self._resends.acking(acks)
        self._send(sent)
        with self._cond:
            self._unacked = max(0, self._unacked - len(acks))
            done = self._closing and self._refs == 0 and self._unacked == 0
        if done:
            self._close()

    def release(self, linger_s: float) -> None:
        """Drop a reader's reference; disconnect once pending acks are in, or after ``linger_s``."""
        with self._cond:
            self._refs -= 1
            if self._refs > 0:
                return
            self._closing = True
            pending = self._unacked
        if pending == 0:
            self._close()
            return
        timer = threading.Timer(linger_s, self._close_if_unused)
        timer.daemon = True
        timer.start()

    def _close_if_unused(self) -> None:
        with self._cond:
            unused = self._closing and self._refs == 0
        if unused:
            self._close()

    def _close(self) -> None:
        with self._registry_lock:
            if self._closed:
                return
            self._closed = True
            if self._registry.get(self.settings.client_id) is self:
                del self._registry[self.settings.client_id]
        try:
            with self._write_lock:
                write_frame(self._receiver.stdin, None)
                self._receiver.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self._receiver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._receiver.kill()
