"""An oversize payload travels as its head and true size: the receiver's frames, the reader, the coder, the parser
and the replay file reader never hold or decode it whole, and it still becomes exactly one oversize dead letter."""
import json
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc

from apache_beam.utils.timestamp import Timestamp

from features.coders import RawEventsCoder
from features.schema import (
    DeadLetterReason,
    EventRules,
    RawEvent,
    event_payload,
    parse_events,
)
from inference_pipeline.connectors.mqtt import session as session_module
from inference_pipeline.connectors.mqtt.settings import MqttSettings, ReadLimits
from inference_pipeline.connectors.mqtt.source import MqttSource
from inference_pipeline.connectors.replay import read_bounded_payloads, read_payloads

LIMIT = 65536
BIG = 5_000_000
RULES = EventRules(("x",), max_payload_bytes=LIMIT)


def test_a_head_with_its_true_size_is_one_oversize_dead_letter_naming_the_size():
    head = b'{"device_id": "d", "ts": 1767225600, "readings": {"x": 1.0}, "pad": "' + b"a" * LIMIT
    batches, dead = parse_events([RawEvent(head[:LIMIT], 5.0, BIG)], RULES, 1767225600.0)
    assert batches == [] and len(dead) == 1
    assert dead[0].reason == DeadLetterReason.OVERSIZE
    assert dead[0].detail == f"payload of {BIG} bytes exceeds {LIMIT}"
    assert dead[0].payload == head[:LIMIT].decode()


def test_the_coder_keeps_the_true_size():
    events = [RawEvent(b"whole", 1.5), RawEvent(b"head", 2.5, BIG)]
    coder = RawEventsCoder()
    assert coder.decode(coder.encode(events)) == events
    assert coder.estimate_size(events) == len(coder.encode(events))


def _receiver_sending(deliveries: list[tuple]):
    """A stand-in receiver process that forwards ``deliveries`` in one frame, then waits."""
    frame = pickle.dumps(deliveries)
    code = ("import sys, time; sys.stdout.buffer.write(" + repr(struct.pack("<I", len(frame)) + frame)
            + "); sys.stdout.flush(); time.sleep(60)")

    def start(settings):
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return start


def test_the_reader_passes_the_head_on_and_never_reads_an_event_time_from_it(monkeypatch):
    now = time.time()
    valid = event_payload("d", now - 40, {"x": 1.0}, event_id="e-1").encode()
    head = event_payload("d", now - 20, {"x": 2.0}, event_id="e-2").encode()
    monkeypatch.setattr(session_module, "start_receiver", _receiver_sending([
        (valid, now - 30, 1, 1, 1, len(valid), False), (head, now - 25, 2, 1, 1, BIG, False)]))
    settings = MqttSettings(client_id="iotml-oversize-test", topics=("t/#",))
    reader = MqttSource(settings, ReadLimits(max_lateness_s=0)).create_reader(None, None)
    try:
        assert reader.start()
        assert reader.get_current() == [RawEvent(valid, now - 30), RawEvent(head, now - 25, BIG)]
        assert reader.get_watermark() == Timestamp.of(now - 25)  # its arrival, not the ts in its head
    finally:
        reader._session._receiver.kill()
        reader.close()


def test_a_very_long_replay_line_is_read_as_its_head_and_size(tmp_path):
    good = event_payload("d", 1767225600, {"x": 1.0}, event_id="e-1")
    huge = '{"device_id": "d", "pad": "' + "é" * BIG + '"}'
    path = tmp_path / "events.jsonl"
    path.write_text(f"{good}\r\n{huge}\n\n{good}\n", encoding="utf-8")
    tracemalloc.start()
    try:
        payloads, sizes = read_bounded_payloads(path, "device_id", "ts", ("x",), None, LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT + 2**20
    assert payloads[0] == payloads[2] == good and len(payloads[1]) <= LIMIT
    assert sizes == {1: len(huge.encode())}
    batches, dead = parse_events([RawEvent(p, 0.0, sizes.get(i)) for i, p in enumerate(payloads)], RULES,
                                 1767225600.0)
    assert sum(len(batch) for batch in batches) == 2
    assert [(letter.reason, letter.detail) for letter in dead] == [
        ("oversize", f"payload of {len(huge.encode())} bytes exceeds {LIMIT}")]
    assert read_payloads(path, "device_id", "ts", ("x",), None)[1] == huge


def test_a_line_just_over_the_limit_is_cut_and_one_at_the_limit_is_whole(tmp_path):
    at, over = "a" * LIMIT, "b" * (LIMIT + 1)
    path = tmp_path / "edge.jsonl"
    path.write_text(f"{at}\n{over}\n{json.dumps({'k': 1})}")
    payloads, sizes = read_bounded_payloads(path, "device_id", "ts", ("x",), None, LIMIT)
    assert payloads == [at, over[:LIMIT], '{"k": 1}'] and sizes == {1: LIMIT + 1}
