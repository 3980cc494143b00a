"""After a reconnect to a kept session the broker resends what it has not seen acknowledged: no copy is processed
twice, and every copy is acknowledged, however the original's ack fared."""
import dataclasses
import pickle
import struct
import subprocess
import sys
import time

from inference_pipeline.connectors.mqtt import session as session_module
from inference_pipeline.connectors.mqtt.receiver import Reconnected
from inference_pipeline.connectors.mqtt.resends import Resends
from inference_pipeline.connectors.mqtt.session import _Delivery
from inference_pipeline.connectors.mqtt.settings import MqttSettings


def delivery(mid: int, epoch: int, payload: bytes | None = None, qos: int = 1, dup: bool = False) -> _Delivery:
    payload = payload or f"event-{mid}".encode()
    return _Delivery(payload, 100.0 + mid, mid, qos, epoch, len(payload), dup)


def connected(resends: Resends, *deliveries: _Delivery, epoch: int = 1) -> None:
    resends.reconnected(epoch, True)
    assert [resends.admit(d) for d in deliveries] == [(True, [])] * len(deliveries)


def test_a_resend_of_an_outstanding_delivery_is_dropped_and_the_original_acknowledges_it():
    resends, first, second = Resends(), delivery(1, 1), delivery(2, 1)
    connected(resends, first, second)
    resends.reconnected(2, True)
    assert resends.admit(delivery(1, 2, dup=True)) == (False, [])
    assert resends.admit(delivery(2, 2, dup=True)) == (False, [])
    assert first.epoch == second.epoch == 2
    assert resends.acking([(1, 1)]) == [(2, 1)]
    assert resends.acking([(2, 2)]) == [(2, 2)]


def test_a_resend_of_a_delivery_whose_ack_was_lost_or_dropped_is_acknowledged_at_once():
    resends = Resends()
    connected(resends, delivery(1, 1), delivery(2, 1))
    assert resends.acking([(1, 1)]) == [(1, 1)]
    resends.reconnected(2, True)
    assert resends.acking([(1, 2)]) == [(1, 2)]
    assert resends.admit(delivery(1, 2, dup=True)) == (False, [(2, 1)])
    assert resends.admit(delivery(2, 2, dup=True)) == (False, [(2, 2)])


def test_new_messages_other_payloads_and_resends_to_a_new_session_are_queued():
    resends = Resends()
    connected(resends, delivery(1, 1), delivery(2, 1), delivery(3, 1, qos=0))
    resends.reconnected(2, True)
    assert resends.admit(delivery(1, 2, b"another message", dup=True)) == (True, [])
    assert resends.admit(delivery(7, 2, dup=True)) == (True, [])
    assert resends.admit(delivery(8, 2)) == (True, [])
    resends.reconnected(3, False)
    assert resends.admit(delivery(2, 3, dup=True)) == (True, [])
    assert resends.acking([(1, 1)]) == [(1, 1)]


def _frame(items: list) -> bytes:
    """A receiver frame: markers as they are, deliveries as tuples."""
    data = pickle.dumps([item if isinstance(item, Reconnected) else dataclasses.astuple(item) for item in items])
    return struct.pack("<I", len(data)) + data


def test_the_session_drops_adopted_resends_and_acknowledges_lost_acks_at_once(monkeypatch, tmp_path):
    before = [Reconnected(1, True), delivery(1, 1), delivery(2, 1)]
    after = [Reconnected(2, True), delivery(1, 2, dup=True), delivery(2, 2, dup=True), delivery(3, 2)]
    acks_seen = tmp_path / "acks.bin"
    code = (f"import sys, time; out = sys.stdout.buffer; out.write({_frame(before)!r}); out.flush(); "
            f"sys.stdin.buffer.read(int.from_bytes(sys.stdin.buffer.read(4), 'little')); "
            f"out.write({_frame(after)!r}); out.flush(); "
            f"open({str(acks_seen)!r}, 'wb').write(sys.stdin.buffer.read())")
    monkeypatch.setattr(session_module, "start_receiver", lambda settings: subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    session = session_module._Session(MqttSettings(client_id="iotml-resend-session", topics=("t/#",)))
    try:
        (first,) = session.take(timeout=10, limit=1, window_s=0, gap_s=0)
        session.ack([(first.epoch, first.mid)])
        rest = session.take(timeout=10, limit=10, window_s=1, gap_s=0.5)
        time.sleep(0.5)
    finally:
        session._closed = True
        session._receiver.stdin.close()
        session._receiver.wait(10)
    data, frames = acks_seen.read_bytes(), []
    while data:
        size = struct.unpack_from("<I", data)[0]
        frames.append(pickle.loads(data[4:4 + size]))
        data = data[4 + size:]
    assert [(d.mid, d.epoch) for d in rest] == [(2, 2), (3, 2)]
    assert frames == [[(2, 1)]]
