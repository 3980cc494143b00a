"""Property-based fuzzing of the whole streaming graph: arbitrary bytes, arbitrary JSON and mutated valid events go
through parse, dedup, features, MLTransform, the model, scoring, alerts and the SQLite sink.

Hypothesis draws at least 2,000 payloads per property (every former crasher is an explicit example); each payload is
checked alone against the parser, then all of them run through one Beam pipeline (one pipeline per example would
take hours), which must finish with: counts reconciling exactly (predictions + dead letters + duplicates = payloads),
a reason and a one-line detail on every dead letter, and no non-finite number in any stored row.
"""
from __future__ import annotations

import json
import math
import sqlite3
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.schema import DeadLetterReason, EventRules, RawEvent, parse_events
from inference_pipeline.builder import create_pipeline
from inference_pipeline.config import load_config
from inference_pipeline.runtime.run import outcome_counts, run_graph
from tests import plugin_kinds
from tests.conftest import REPO
from tests.crashers import crashers

EXAMPLES = 2000
DEVICES = ("pump-a", "pump-b", "pump-c")
REASONS = {value for name, value in vars(DeadLetterReason).items() if name.isupper()}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None), max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
numbers = (st.floats() | st.integers() | st.integers(min_value=10**300, max_value=10**400)
           | st.sampled_from([1e9, -1e9, 1e10, 3.4e38, 1e300, 5e-324]))


def valid_event(sensors: tuple[str, ...], now: float) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "device_id": st.sampled_from(DEVICES),
        "ts": st.floats(now - 3600, now),
        "event_id": st.uuids().map(str),
        "readings": st.fixed_dictionaries({sensor: st.floats(-50, 500) for sensor in sensors}),
    })


@st.composite
def mutated_events(draw, sensors: tuple[str, ...], now: float) -> str:
    """A valid event, or one with a field replaced, removed or corrupted."""
    event = draw(valid_event(sensors, now))
    field = draw(st.sampled_from(["device_id", "ts", "event_id", "readings", "reading", "extra", "none"]))
    event["readings"] = dict(event["readings"])
    if field == "reading":
        event["readings"][draw(st.sampled_from(sensors))] = draw(numbers | json_values)
    elif field == "extra":
        event[draw(st.text(max_size=8))] = draw(json_values)
    elif field != "none":
        event[field] = draw(st.just(None) | numbers | json_values | st.text(st.characters(codec=None)))
        if draw(st.booleans()):
            del event[field]
    return json.dumps(event)


def with_crashers(property_test, sensors: tuple[str, ...], now: float, encode=lambda payload: payload):
    """The property with every former crasher as an explicit example."""
    for payload, _ in crashers(DEVICES[0], sensors, now - 60):
        property_test = example(encode(payload))(property_test)
    return FUZZ(property_test)


class Collected:
    """Payloads drawn for one property, each checked alone against the parser."""

    def __init__(self, sensors: tuple[str, ...]):
        self.rules = EventRules(sensors, frozenset(DEVICES))
        self.payloads: list[bytes | str] = []

    def add(self, payload: bytes | str) -> None:
        now = time.time()
        batches, dead = parse_events([RawEvent(payload, now)], self.rules, now)
        assert sum(len(b) for b in batches) + len(dead) == 1
        for letter in dead:
            assert letter.reason in REASONS and letter.detail and "\n" not in letter.detail
            letter.payload.encode("utf-8")
        self.payloads.append(payload)


def run_graph_over(payloads: list, trained, folder) -> None:
    """All payloads through the streaming graph into SQLite; the properties every outcome must hold."""
    config = load_config(REPO / "configs" / "local.yaml", {
        "work_dir": str(folder), "model.uri": str(trained.version.path),
        "source": {"kind": "list", "payloads": payloads, "batch_size": 50},
        "sinks": {"results": {"kind": "sqlite", "path": str(folder / "results.db")}},
        "events": {"known_devices": list(DEVICES)}})
    _, result = run_graph(create_pipeline(config, trained.version, config.events.rules(
        trained.version.feature_spec.sensors)))
    counts = outcome_counts(result)
    with sqlite3.connect(folder / "results.db") as db:
        predictions = db.execute("SELECT anomaly_score, raw_score, is_anomaly FROM predictions").fetchall()
        letters = db.execute("SELECT reason, detail, payload FROM dead_letters").fetchall()
    assert len(predictions) == counts["predictions"] and len(letters) == counts["dead_letters"]
    assert len(predictions) + len(letters) + counts["duplicates"] == len(payloads)
    assert all(math.isfinite(score) and math.isfinite(raw) and 0 <= score <= 1 for score, raw, _ in predictions)
    assert all(reason in REASONS and detail and "\n" not in detail for reason, detail, _ in letters)
    assert predictions, "no payload was valid: the mutation strategy drifted"


@pytest.fixture
def plugged(monkeypatch):
    plugin_kinds.register(monkeypatch)


def test_arbitrary_bytes_never_stop_the_pipeline(plugged, trained, tmp_path):
    sensors = trained.version.feature_spec.sensors
    collected, now = Collected(sensors), time.time()
    events = valid_event(sensors, now).map(lambda event: json.dumps(event).encode())
    with_crashers(given(st.binary(max_size=200) | events)(collected.add), sensors, now, str.encode)()
    run_graph_over(collected.payloads, trained, tmp_path)


def test_arbitrary_json_never_stops_the_pipeline(plugged, trained, tmp_path):
    sensors = trained.version.feature_spec.sensors
    collected, now = Collected(sensors), time.time()
    values = json_values.map(json.dumps) | valid_event(sensors, now).map(json.dumps)
    with_crashers(given(values)(collected.add), sensors, now)()
    run_graph_over(collected.payloads, trained, tmp_path)


def test_mutated_valid_events_never_stop_the_pipeline(plugged, trained, tmp_path):
    sensors = trained.version.feature_spec.sensors
    collected, now = Collected(sensors), time.time()
    with_crashers(given(mutated_events(sensors, now))(collected.add), sensors, now)()
    run_graph_over(collected.payloads, trained, tmp_path)
