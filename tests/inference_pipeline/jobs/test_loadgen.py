"""The load generator: live-stamped fleet events at a steady rate, with exactly the requested share of malformed ones."""
import json
import time
from collections import Counter

import pytest

from features.schema import EventRules, RawEvent, parse_events
from inference_pipeline.jobs.loadgen import Fleet, publisher_settings, schedule
from training.malformed import KINDS
from training.simulate import SENSORS


def test_valid_events_carry_the_publish_time_and_unique_ids():
    fleet = Fleet(devices=5, events=500, rate=1000.0, seed=3)
    now = time.time()
    messages = fleet.take(200, now) + fleet.take(300, now + 1)
    payloads = [json.loads(payload) for _, payload, reason in messages if reason is None]
    assert len(payloads) == 500
    assert {p["ts"] for p in payloads[:200]} == {now} and {p["ts"] for p in payloads[200:]} == {now + 1}
    assert len({p["event_id"] for p in payloads}) == 500
    assert {device for device, _, _ in messages} == {p["device_id"] for p in payloads} and len(set(
        device for device, _, _ in messages)) == 5


def test_malformed_share_is_exact_and_every_one_is_rejected_with_its_reason():
    fleet = Fleet(devices=4, events=7000, rate=7000.0, malformed_fraction=0.01, max_payload_bytes=4096)
    messages = [m for _ in range(70) for m in fleet.take(100, time.time())]
    reasons = Counter(reason for _, _, reason in messages if reason)
    assert len(messages) == 7000 and sum(reasons.values()) == 70 and set(reasons) == set(KINDS)
    rules = EventRules(SENSORS, frozenset(fleet.device_ids.tolist()), 300.0, 4096)
    batches, dead = parse_events([RawEvent(payload, 0.0) for _, payload, _ in messages], rules, time.time())
    assert Counter(letter.reason for letter in dead) == reasons
    assert sum(len(b) for b in batches) == 7000 - 70


def test_schedule_releases_messages_at_the_rate():
    started = time.time()
    due = list(schedule(rate=400.0, total=200, started=started))
    elapsed = time.time() - started
    assert sum(n for n, _ in due) == 200
    assert 0.45 < elapsed < 0.8 and all(lag < 0.1 for _, lag in due)


@pytest.mark.parametrize("url, host, port, prefix", [
    ("mqtt://127.0.0.1:1884/plant-7", "127.0.0.1", 1884, "plant-7"),
    ("mqtts://broker.example/iotml/?client_id=gen-1", "broker.example", 8883, "iotml"),
])
def test_publisher_url_gives_broker_and_topic_prefix(url, host, port, prefix):
    settings, topic_prefix = publisher_settings(url)
    assert (settings.host, settings.port, topic_prefix) == (host, port, prefix)
    assert settings.client_id
