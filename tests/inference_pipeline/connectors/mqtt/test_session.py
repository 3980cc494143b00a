"""The reading side of an MQTT session fails promptly, saying why, when its receiver process dies or its pipe
carries something unreadable: never a silent stall."""
import re
import subprocess
import sys
import time

import pytest

from inference_pipeline.connectors.mqtt import session as session_module
from inference_pipeline.connectors.mqtt.settings import MqttSettings

SETTINGS = MqttSettings(client_id="iotml-session-test", topics=("t/#",))


def receiver_running(code: str):
    def start(settings):
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return start


@pytest.mark.parametrize("code, reason", [
    ("import sys; sys.exit(3)", "exited (code 3)"),
    ("import sys, time; sys.stdout.buffer.write(b'\\x10\\x00\\x00\\x00' + b'not a pickle....'); sys.stdout.flush(); "
     "time.sleep(60)", "sent an unreadable frame"),
    ("import pickle, struct, sys, time; data = pickle.dumps([('too', 'few')]); "
     "sys.stdout.buffer.write(struct.pack('<I', len(data)) + data); sys.stdout.flush(); time.sleep(60)",
     "sent an unreadable frame"),
])
def test_a_dead_or_garbled_receiver_fails_the_reader_with_its_reason(monkeypatch, code, reason):
    monkeypatch.setattr(session_module, "start_receiver", receiver_running(code))
    session = session_module._Session(SETTINGS)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=re.escape(reason)):
        session.take(timeout=30, limit=10, window_s=0.01, gap_s=0.01)
    assert time.monotonic() - started < 10
    assert session._receiver.wait(10) is not None


def test_a_batch_holds_at_most_max_bytes_of_payload_and_always_one_message(monkeypatch):
    sizes = [400, 400, 400, 1500, 100, 100]
    items = [(b"x" * size, 100.0, mid, 1, 1, size, False) for mid, size in enumerate(sizes, 1)]
    code = ("import pickle, struct, sys, time; data = pickle.dumps(" + repr(items) + "); "
            "sys.stdout.buffer.write(struct.pack('<I', len(data)) + data); sys.stdout.flush(); time.sleep(60)")
    monkeypatch.setattr(session_module, "start_receiver", receiver_running(code))
    session = session_module._Session(SETTINGS)
    try:
        batches = [session.take(timeout=10, limit=10, window_s=0.2, gap_s=0.1, max_bytes=1000) for _ in range(4)]
        session.give_back(batches[0])
        returned = session.take(timeout=10, limit=10, window_s=0, gap_s=0, max_bytes=500)
    finally:
        session._closed = True
        session._receiver.kill()
    assert [[d.mid for d in batch] for batch in batches] == [[1, 2], [3], [4], [5, 6]]
    assert [d.mid for d in returned] == [1]
