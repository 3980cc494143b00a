"""Accuracy metrics on hand-built frames whose answers are worked out in the comments."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from inference_pipeline.evaluation.accuracy import (
    MATCH_COLUMN,
    fault_intervals_from_truth,
    incident_scores,
    latency_percentiles,
    match_alerts,
    reconcile,
    row_scores,
)


def _truth() -> pd.DataFrame:
    """Device a: leak at ts 20..30; device b: overheat at ts 50..70; rows shuffled."""
    ts = np.arange(0.0, 100.0, 10.0)
    a_label = np.isin(ts, [20, 30]).astype(int)
    b_label = np.isin(ts, [50, 60, 70]).astype(int)
    df = pd.DataFrame({
        "event_id": [f"a-{i}" for i in range(10)] + [f"b-{i}" for i in range(10)],
        "device_id": ["a"] * 10 + ["b"] * 10,
        "ts": np.concatenate([ts, ts]),
        "vibration": np.arange(20.0),
        "label": np.concatenate([a_label, b_label]),
        "fault_type": np.where(np.concatenate([a_label, b_label]) == 1, ["leak"] * 10 + ["overheat"] * 10, "none"),
    })
    return df.sample(frac=1.0, random_state=3).reset_index(drop=True)


def _alerts(rows: list[tuple[str, float, float, str]]) -> pd.DataFrame:
    return pd.DataFrame({
        "incident_id": [f"i{k}" for k in range(len(rows))],
        "device_id": [r[0] for r in rows],
        "start_time": [r[1] for r in rows],
        "end_time": [r[2] for r in rows],
        "peak_score": 0.9,
        "n_events": 3,
        "status": [r[3] for r in rows],
        "model_name": "m",
        "model_version": "1",
    })


FAULTS = pd.DataFrame({"device_id": ["a", "b"], "fault_type": ["leak", "overheat"],
                       "start_ts": [20.0, 50.0], "end_ts": [30.0, 70.0]})
# a@25-40 hits the leak (delay 5); b open at 100 is the point 100, inside [50-60, 70+60] (delay 50); a@200-210 is false.
THREE_ALERTS = [("a", 25.0, 40.0, "closed"), ("b", 100.0, math.nan, "open"), ("a", 200.0, 210.0, "closed")]


def test_fault_intervals_from_truth_finds_runs_per_device():
    got = fault_intervals_from_truth(_truth())
    pd.testing.assert_frame_equal(got, FAULTS, check_dtype=False)


def test_fault_intervals_split_on_device_and_fault_type_change():
    truth = pd.DataFrame({
        "event_id": list("pqrstu"),
        "device_id": ["x", "x", "x", "y", "y", "y"],
        "ts": [0.0, 1.0, 2.0, 0.0, 1.0, 2.0],
        "label": [0, 1, 1, 1, 1, 0],
        "fault_type": ["none", "leak", "drift", "leak", "leak", "none"],
    })
    got = fault_intervals_from_truth(truth)
    assert got.to_dict("records") == [
        {"device_id": "x", "fault_type": "leak", "start_ts": 1.0, "end_ts": 1.0},
        {"device_id": "x", "fault_type": "drift", "start_ts": 2.0, "end_ts": 2.0},
        {"device_id": "y", "fault_type": "leak", "start_ts": 0.0, "end_ts": 1.0},
    ]


def test_fault_intervals_empty_when_no_labels():
    got = fault_intervals_from_truth(_truth().assign(label=0))
    assert got.empty and list(got.columns) == ["device_id", "fault_type", "start_ts", "end_ts"]


def test_incident_scores_two_faults_three_alerts_one_false():
    got = incident_scores(_alerts(THREE_ALERTS), FAULTS, tolerance_s=60.0)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(1.0)
    assert got["f1"] == pytest.approx(0.8)
    assert got["counts"] == {"alerts": 3, "true_positive_alerts": 2, "faults": 2, "detected_faults": 2}
    assert got["recall_by_fault_type"] == {"leak": 1.0, "overheat": 1.0}
    assert got["mean_detection_delay_s"] == pytest.approx((5.0 + 50.0) / 2)


def test_incident_scores_without_tolerance_misses_late_alert():
    got = incident_scores(_alerts(THREE_ALERTS), FAULTS, tolerance_s=0.0)
    assert got["precision"] == pytest.approx(1 / 3)
    assert got["recall"] == pytest.approx(0.5)
    assert got["recall_by_fault_type"] == {"leak": 1.0, "overheat": 0.0}
    assert got["mean_detection_delay_s"] == pytest.approx(5.0)


def test_incident_scores_delay_uses_first_alert_only():
    alerts = _alerts([("a", 28.0, 29.0, "closed"), ("a", 22.0, 24.0, "closed")])
    got = incident_scores(alerts, FAULTS)
    assert got["counts"]["true_positive_alerts"] == 2
    assert got["counts"]["detected_faults"] == 1
    assert got["mean_detection_delay_s"] == pytest.approx(2.0)


def test_open_alert_is_a_point_not_open_ended():
    alerts = _alerts([("a", -500.0, math.nan, "open")])
    got = incident_scores(alerts, FAULTS, tolerance_s=60.0)
    assert got["precision"] == 0.0
    assert got["recall"] == 0.0
    assert got["mean_detection_delay_s"] is None


def test_alert_on_another_device_does_not_match():
    alerts = _alerts([("b", 25.0, 26.0, "closed")])
    got = incident_scores(alerts, FAULTS, tolerance_s=0.0)
    assert got["counts"]["true_positive_alerts"] == 0
    assert got["recall_by_fault_type"] == {"leak": 0.0, "overheat": 0.0}


def test_incident_scores_with_nothing_to_score_are_undefined():
    got = incident_scores(_alerts([]), FAULTS.iloc[:0])
    assert got["precision"] is None and got["recall"] is None and got["f1"] is None


def test_match_alerts_names_the_fault_or_none():
    got = match_alerts(_alerts(THREE_ALERTS), FAULTS)
    assert got[MATCH_COLUMN].tolist() == ["leak", "overheat", None]


def test_row_scores_confusion_counts():
    # tp: e0, e4; fp: e1; fn: e2; tn: e3, e5, e6; "zz" has no label and is not joined.
    truth = pd.DataFrame({"event_id": [f"e{i}" for i in range(7)], "label": [1, 0, 1, 0, 1, 0, 0]})
    predictions = pd.DataFrame({"event_id": ["e6", "e5", "e4", "e3", "e2", "e1", "e0", "zz"],
                                "is_anomaly": [0, 0, 1, 0, 0, 1, 1, 1]})
    got = row_scores(predictions, truth)
    assert got["counts"] == {"rows": 7, "unmatched_predictions": 1, "tp": 2, "fp": 1, "fn": 1, "tn": 3}
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["f1"] == pytest.approx(2 / 3)
    assert got["far"] == pytest.approx(1 / 4)
    assert got["mar"] == pytest.approx(1 / 3)


def test_latency_percentiles_of_one_to_hundred_ms():
    received = np.full(101, 1_767_225_600.0)
    processed = received + np.append(np.arange(1, 101) / 1000.0, np.nan)
    got = latency_percentiles(pd.DataFrame({"received_at": received, "processing_time": processed}))
    assert got["n"] == 100
    assert got["p50_ms"] == pytest.approx(50.5, abs=1e-3)
    assert got["p95_ms"] == pytest.approx(95.05, abs=1e-3)
    assert got["p99_ms"] == pytest.approx(99.01, abs=1e-3)
    assert got["max_ms"] == pytest.approx(100.0, abs=1e-3)


def test_latency_percentiles_empty():
    got = latency_percentiles(pd.DataFrame({"received_at": [], "processing_time": []}))
    assert got == {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}


@pytest.mark.parametrize(("events_in", "preds", "dead", "missing", "balanced"), [
    (10, 7, 3, 0, True),
    (10, 7, 2, 1, False),
    (10, 8, 3, -1, False),
])
def test_reconcile(events_in, preds, dead, missing, balanced):
    got = reconcile(events_in, preds, dead)
    assert got["missing"] == missing
    assert got["balanced"] is balanced
