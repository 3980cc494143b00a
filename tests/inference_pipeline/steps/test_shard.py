"""Sharding a bounded stream by device: the shard key is the device id the parser reads, exactly, and a replay on two
local worker processes predicts exactly what one worker does."""
import json
import sqlite3

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from features.schema import RawEvent, payload_device
from inference_pipeline.builder import create_pipeline
from inference_pipeline.connectors.replay import ReplaySettings
from inference_pipeline.connectors.sqlite import SqliteSettings
from inference_pipeline.runtime.run import event_rules, outcome_counts, run_graph
from inference_pipeline.steps.shard import device_key
from training.malformed import KINDS, corrupt
from training.simulate import iter_payloads, simulate_fleet

NAMES = st.text(min_size=1, max_size=12)
VALUES = st.recursive(st.none() | st.floats(allow_nan=False) | NAMES,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                          st.sampled_from(["device_id", "readings", "x", 'a"b', "\\"]), inner, max_size=3),
                      max_leaves=6)


@settings(max_examples=400, deadline=None)
@given(device=NAMES, extra=st.dictionaries(st.sampled_from(["meta", "readings", "note", "event_id"]), VALUES,
                                           max_size=3),
       ascii_only=st.booleans(), compact=st.booleans(), first=st.booleans())
def test_the_shard_key_is_the_device_id_the_parser_reads(device, extra, ascii_only, compact, first):
    event = {"device_id": device, **extra} if first else {**extra, "device_id": device}
    payload = json.dumps(event, ensure_ascii=ascii_only, separators=(",", ":") if compact else None)
    assert payload_device(payload, 65536) == device
    try:
        encoded = payload.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 payload carries it
        return
    assert payload_device(encoded, 65536) == device


@given(st.text(max_size=80))
def test_any_text_gets_the_parsers_device_or_none(text):
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    expected = obj.get("device_id") if isinstance(obj, dict) else None
    found = payload_device(text, 65536)
    assert found == (expected if isinstance(expected, str) else None)


def test_truncated_oversize_payloads_are_keyed_by_no_device():
    assert device_key(RawEvent('{"device_id": "pump-7"', 0.0, size=10**6), 65536) == ""
    assert device_key(RawEvent('{"device_id": "pump-7"}', 0.0), 65536) == "pump-7"


def _replay(trained, stream, db, workers):
    config = trained.config.model_copy(update={
        "source": ReplaySettings(path=str(stream), batch_size=301),
        "sinks": {"results": SqliteSettings(path=str(db))},
        "pipeline_options": {"direct_num_workers": workers, "direct_running_mode": "multi_processing"}
        if workers > 1 else {}})
    _, result = run_graph(create_pipeline(config, trained.version, event_rules(config, trained.version)))
    with sqlite3.connect(db) as connection:
        predictions = pd.read_sql_query(
            "SELECT event_id, device_id, anomaly_score, raw_score, window_fill, is_anomaly, late FROM predictions "
            "ORDER BY event_id", connection)
        dead = pd.read_sql_query("SELECT reason, payload FROM dead_letters ORDER BY payload", connection)
    return outcome_counts(result), predictions, dead


def test_two_workers_predict_exactly_what_one_does(trained, tmp_path):
    frame = simulate_fleet(7, 150, seed=5, start=1767300000.0, fault_rate=1.0)
    good = list(iter_payloads(frame, trained.version.feature_spec.sensors))
    bad = [corrupt(good[i], kind) for i, kind in enumerate(KINDS)]
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join(bad[:2] + good + bad[2:]) + "\n")

    one = _replay(trained, stream, tmp_path / "one.db", 1)
    two = _replay(trained, stream, tmp_path / "two.db", 2)

    assert one[0] == two[0] and one[0]["predictions"] + one[0]["dead_letters"] == len(good) + len(bad)
    pd.testing.assert_frame_equal(one[1], two[1])
    pd.testing.assert_frame_equal(one[2], two[2])
    assert set(frame["event_id"]) <= set(one[1]["event_id"]) and one[1]["device_id"].nunique() >= 7
    assert len(one[2]) > 0
