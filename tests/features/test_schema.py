import json
import time

import numpy as np

import pytest

from features.schema import DeadLetterReason, EventRules, RawEvent, encode_events, event_payload, parse_events
from tests.crashers import crashers

RULES = EventRules(("pressure", "flow"), frozenset({"pump-1", "pump-2"}), max_future_s=60, max_payload_bytes=512)
NOW = 1_800_000_000.0


def good(device="pump-1", ts=NOW - 10, **readings):
    return event_payload(device, ts, {"pressure": 1.5, "flow": 3.0, **readings}, f"{device}-{ts}")


def parse(*payloads):
    return parse_events([RawEvent(p, NOW) for p in payloads], RULES, NOW)


@pytest.mark.parametrize("payload, reason", [
    ('{"device_id": "pump-1", "ts": 1', DeadLetterReason.BAD_JSON),
    (b"\xff\xfe not utf8", DeadLetterReason.BAD_JSON),
    ('{"ts": 1767225600, "readings": {}}', DeadLetterReason.MISSING_FIELD),
    ('{"device_id": "pump-1", "ts": 1767225600, "readings": {}}', DeadLetterReason.MISSING_FIELD),
    ('{"device_id": "pump-1", "ts": 1767225600, "readings": {"pressure": null, "flow": null}}',
     DeadLetterReason.MISSING_FIELD),
    ('{"device_id": "pump-1", "ts": 1767225600, "readings": {"pressure": "high", "flow": 1}}', DeadLetterReason.WRONG_TYPE),
    ('{"device_id": "pump-1", "ts": true, "readings": {"pressure": 1, "flow": 1}}', DeadLetterReason.WRONG_TYPE),
    ('{"device_id": 7, "ts": 1767225600, "readings": {"pressure": 1, "flow": 1}}', DeadLetterReason.WRONG_TYPE),
    ('[1, 2, 3]', DeadLetterReason.WRONG_TYPE),
    ('{"device_id": "pump-1", "ts": 1767225600, "readings": {"pressure": NaN, "flow": 1}}', DeadLetterReason.NON_FINITE),
    ('{"device_id": "pump-1", "ts": 1767225600, "readings": {"pressure": Infinity, "flow": 1}}', DeadLetterReason.NON_FINITE),
    (json.dumps({"device_id": "pump-1", "ts": NOW + 3600, "readings": {"pressure": 1, "flow": 1}}),
     DeadLetterReason.FUTURE_TIMESTAMP),
    ('{"device_id": "ghost", "ts": 1767225600, "readings": {"pressure": 1, "flow": 1}}', DeadLetterReason.UNKNOWN_DEVICE),
    (json.dumps({"device_id": "pump-1", "ts": 1767225600, "readings": {"pressure": 1, "flow": 1}, "pad": "x" * 600}),
     DeadLetterReason.OVERSIZE),
])
def test_malformed_event_goes_to_dead_letter_with_reason(payload, reason):
    batches, dead = parse(good(), payload, good("pump-2"))
    assert [letter.reason for letter in dead] == [reason]
    assert dead[0].detail
    assert sorted(b.device_id for b in batches) == ["pump-1", "pump-2"]


@pytest.mark.parametrize("payload, reason", crashers("pump-1", RULES.sensors, 1767225600.0))
def test_former_crashers_go_to_dead_letters_with_reason(payload, reason):
    batches, dead = parse_events([RawEvent(p, NOW) for p in (good(), payload)], EventRules(RULES.sensors), NOW)
    assert [letter.reason for letter in dead] == [reason] and dead[0].detail
    assert [b.device_id for b in batches] == ["pump-1"]


def test_a_dead_letter_is_always_storable_text_with_a_one_line_detail():
    payloads = [payload for payload, _ in crashers("pump-1", RULES.sensors, 1767225600.0)]
    payloads.append('{"device_id": "\ud800", "ts": 1}')
    _, dead = parse_events([RawEvent(p, NOW) for p in payloads], EventRules(RULES.sensors), NOW)
    assert len(dead) == len(payloads)
    for letter in dead:
        for text in (letter.payload, letter.detail, letter.device_id or ""):
            text.encode("utf-8")
        assert "\n" not in letter.detail


def test_good_events_are_grouped_per_device_in_arrival_order():
    batches, dead = parse(good(ts=NOW - 3), good("pump-2", ts=NOW - 2), good(ts=NOW - 1, pressure=9.0))
    assert dead == []
    by_device = {b.device_id: b for b in batches}
    assert by_device["pump-1"].ts.tolist() == [NOW - 3, NOW - 1]
    assert by_device["pump-1"].values.tolist() == [[1.5, 3.0], [9.0, 3.0]]
    assert by_device["pump-1"].received_at.tolist() == [NOW, NOW]


def test_iso_timestamps_and_missing_event_ids_are_accepted():
    payload = '{"device_id": "pump-1", "ts": "2026-01-01T00:00:01Z", "readings": {"pressure": 1, "flow": 2}}'
    batches, dead = parse(payload)
    assert dead == []
    assert batches[0].ts.tolist() == [1767225601.0]
    [event_id] = batches[0].event_ids.tolist()
    assert event_id.startswith("pump-1@1767225601.000000#")


def test_events_without_ids_at_the_same_time_stay_apart_and_a_resent_copy_keeps_its_id():
    payload = '{"device_id": "pump-1", "ts": 1767225601, "readings": {"pressure": %s, "flow": 2}}'
    batches, _ = parse(payload % 1, payload % 2, payload % 1)
    first, second, copy = batches[0].event_ids.tolist()
    assert first != second and first == copy


def test_any_device_is_accepted_without_a_registry():
    rules = EventRules(("pressure", "flow"))
    batches, dead = parse_events([RawEvent(good("new-device"), time.time())], rules, NOW)
    assert dead == [] and batches[0].device_id == "new-device"


def test_encoded_events_round_trip_through_the_parser():
    payloads = encode_events(["a\"b", "c", "d"], [NOW - 5, NOW - 4, NOW - 3],
                             [[1.0, 2.0], [3.0, float("nan")], [1.0, float("inf")]], ["pressure", "flow"],
                             ["e1", "e2", "e3"])
    batches, dead = parse_events([RawEvent(p, NOW) for p in payloads], EventRules(("pressure", "flow")), NOW)
    assert [b.device_id for b in batches] == ['a"b', "c"]
    assert [d.reason for d in dead] == [DeadLetterReason.NON_FINITE]


def test_a_missing_or_null_reading_is_kept_as_nan_for_imputation_and_written_back_as_null():
    batches, dead = parse('{"device_id": "pump-1", "ts": 1767225600, "readings": {"pressure": 1}}',
                          '{"device_id": "pump-1", "ts": 1767225601, "readings": {"pressure": null, "flow": 2}}')
    assert dead == []
    values = batches[0].values
    assert values[0, 0] == 1 and np.isnan(values[0, 1]) and np.isnan(values[1, 0]) and values[1, 1] == 2
    payload = encode_events(["pump-1"], [1.0], values[:1], ("pressure", "flow"))[0]
    assert json.loads(payload)["readings"] == {"pressure": 1.0, "flow": None}
