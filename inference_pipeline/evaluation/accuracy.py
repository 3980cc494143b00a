"""Scoring a run against the simulator's labels: incident- and row-level accuracy, the incidents' explanations,
latency and event reconciliation.

Ratios whose denominator is zero (no alerts, no faults, no rows) are ``None`` rather than a made-up 0 or 1.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

FAULT_COLUMNS = ["device_id", "fault_type", "start_ts", "end_ts"]
MATCH_COLUMN = "matched_fault_type"
SENSORS_COLUMN = "sensors"  # per fault (``changed_sensors``): the sensors it changed
_NOT_SENSORS = {"event_id", "device_id", "ts", "label", "fault_type"}


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _f1(precision: float | None, recall: float | None) -> float | None:
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _fault_rows(truth: pd.DataFrame) -> pd.DataFrame:
    """The ``label == 1`` rows in (device, time) order with ``run``: the number of their contiguous run per device
    (a change of ``fault_type`` starts another), ``device_id``, ``fault_type``, ``ts``, indexed as in ``truth``."""
    df = truth.sort_values(["device_id", "ts"], kind="stable")
    fault_type = df["fault_type"].astype(str) if "fault_type" in df else pd.Series("fault", index=df.index)
    device = df["device_id"].to_numpy()
    label = df["label"].to_numpy() == 1
    kind = fault_type.to_numpy()
    starts = np.ones(len(df), dtype=bool)
    starts[1:] = (device[1:] != device[:-1]) | (label[1:] != label[:-1]) | (kind[1:] != kind[:-1])
    return pd.DataFrame({
        "run": np.cumsum(starts)[label],
        "device_id": device[label],
        "fault_type": kind[label],
        "ts": df["ts"].to_numpy(dtype=float)[label],
    }, index=df.index[label])


def fault_intervals_from_truth(truth: pd.DataFrame) -> pd.DataFrame:
    """Contiguous ``label == 1`` runs per device (in time order) as ``device_id, fault_type, start_ts, end_ts``.

    A change of ``fault_type`` inside a labelled run starts a new interval.
    """
    runs = _fault_rows(truth)
    if runs.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if c.endswith("_ts") else object) for c in FAULT_COLUMNS})
    out = runs.groupby("run", sort=True).agg(
        device_id=("device_id", "first"), fault_type=("fault_type", "first"),
        start_ts=("ts", "min"), end_ts=("ts", "max"),
    )
    return out.reset_index(drop=True)[FAULT_COLUMNS]


def _alert_bounds(alerts: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Start and end seconds of each incident; open incidents (or a missing end) end where they start."""
    start = alerts["start_time"].to_numpy(dtype=float)
    end = alerts["end_time"].to_numpy(dtype=float) if "end_time" in alerts else start.copy()
    is_open = np.isnan(end)
    if "status" in alerts:
        is_open |= alerts["status"].astype(str).str.lower().eq("open").to_numpy()
    return start, np.where(is_open, start, end)


def _overlap_pairs(alerts: pd.DataFrame, faults: pd.DataFrame, tolerance_s: float) -> pd.DataFrame:
    """Every (alert, fault) pair of one device whose intervals meet once the fault is widened by ``tolerance_s``."""
    start, end = _alert_bounds(alerts)
    a = pd.DataFrame({"alert": np.arange(len(alerts)), "device_id": alerts["device_id"].to_numpy(dtype=object),
                      "a_start": start, "a_end": end})
    f = pd.DataFrame({"fault": np.arange(len(faults)), "device_id": faults["device_id"].to_numpy(dtype=object),
                      "fault_type": faults["fault_type"].to_numpy(),
                      "f_start": faults["start_ts"].to_numpy(dtype=float),
                      "f_end": faults["end_ts"].to_numpy(dtype=float)})
    pairs = a.merge(f, on="device_id", how="inner")
    hit = (pairs["a_start"] <= pairs["f_end"] + tolerance_s) & (pairs["a_end"] >= pairs["f_start"] - tolerance_s)
    return pairs[hit]


def match_alerts(alerts: pd.DataFrame, faults: pd.DataFrame, tolerance_s: float = 60.0) -> pd.DataFrame:
    """A copy of ``alerts`` with ``matched_fault_type``: the earliest overlapping true fault's type, None if false."""
    pairs = _overlap_pairs(alerts, faults, tolerance_s).sort_values(["alert", "f_start"], kind="stable")
    first = pairs.drop_duplicates("alert").set_index("alert")["fault_type"]
    matched = pd.Series(np.arange(len(alerts)), index=alerts.index).map(first).astype(object)
    out = alerts.copy()
    out[MATCH_COLUMN] = matched.where(matched.notna(), None)
    return out


def incident_scores(alerts: pd.DataFrame, faults: pd.DataFrame, tolerance_s: float = 60.0) -> dict[str, Any]:
    """Incident-level precision (alerts on a true fault), recall (faults with an alert), F1, recall per fault type
    and mean detection delay (first overlapping alert's start minus fault start, detected faults only)."""
    pairs = _overlap_pairs(alerts, faults, tolerance_s)
    tp_alerts = int(pairs["alert"].nunique())
    detected = pairs["fault"].unique()
    precision = _ratio(tp_alerts, len(alerts))
    recall = _ratio(len(detected), len(faults))
    is_detected = pd.Series(np.isin(np.arange(len(faults)), detected), index=faults.index)
    by_type = is_detected.groupby(faults["fault_type"].astype(str)).mean()
    delays = pairs.groupby("fault")["a_start"].min() - pairs.groupby("fault")["f_start"].first()
    return {
        "tolerance_s": float(tolerance_s),
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "counts": {
            "alerts": len(alerts),
            "true_positive_alerts": tp_alerts,
            "faults": len(faults),
            "detected_faults": len(detected),
        },
        "recall_by_fault_type": {str(k): float(v) for k, v in by_type.items()},
        "mean_detection_delay_s": float(delays.mean()) if len(delays) else None,
    }


def changed_sensors(faulted: pd.DataFrame, fault_free: pd.DataFrame, sensors: Sequence[str] | None = None
                    ) -> pd.DataFrame:
    """``fault_intervals_from_truth(faulted)`` with ``sensors``: per fault, the tuple of sensors (in column order)
    whose readings in it differ from the fault-free run's at the same device and time. The simulator puts its faults
    on the signal a ``fault_rate=0`` run of the same seed and timeline gives, so exactly the sensors a fault changed
    differ. ``sensors``: default, the columns both frames have besides ids, time and labels."""
    if sensors is None:
        sensors = [c for c in faulted.columns if c in fault_free.columns and c not in _NOT_SENSORS]
    sensors, faulted = list(sensors), faulted.reset_index(drop=True)
    runs = _fault_rows(faulted)
    faults = fault_intervals_from_truth(faulted)
    if runs.empty:
        return faults.assign(**{SENSORS_COLUMN: pd.Series(dtype=object)})
    clean = runs[["device_id", "ts"]].merge(fault_free[["device_id", "ts", *sensors]], on=["device_id", "ts"],
                                            how="left")
    before = clean[sensors].to_numpy(dtype=float)
    after = faulted.loc[runs.index, sensors].to_numpy(dtype=float)
    differs = pd.DataFrame(~np.isclose(after, before, rtol=1e-12, atol=0.0, equal_nan=True), columns=sensors)
    changed = differs.groupby(runs["run"].to_numpy(), sort=True).any()
    names = np.asarray(sensors, dtype=object)
    faults[SENSORS_COLUMN] = [tuple(names[row]) for row in changed.to_numpy()]
    return faults


def top_sensor_list(value: Any) -> list[dict[str, Any]] | None:
    """An alert's ``top_sensors`` as a list of ``{"sensor", "share"}`` (a results table holds the JSON text); None
    when it has none."""
    if isinstance(value, str):
        value = json.loads(value)
    return list(value) if isinstance(value, (list, tuple)) and len(value) else None


def explanation_accuracy(alerts: pd.DataFrame, faults: pd.DataFrame, tolerance_s: float = 60.0) -> dict[str, Any]:
    """How often an incident's explanation points at the fault: of the anomaly incidents that overlap a fault
    (widened by ``tolerance_s``; the earliest one, as ``match_alerts``), the share whose top sensor is one of the
    sensors that fault changed (``faults``: ``changed_sensors``' frame), overall and per fault type. An incident
    without ``top_sensors`` counts as not pointing at it (``unexplained`` counts them)."""
    if "kind" in alerts:
        alerts = alerts[alerts["kind"].astype(str) == "anomaly"]
    pairs = _overlap_pairs(alerts, faults, tolerance_s).sort_values(["alert", "f_start"], kind="stable")
    first = pairs.drop_duplicates("alert")
    explained = alerts["top_sensors"] if "top_sensors" in alerts else pd.Series(None, index=alerts.index)
    tops = [top_sensor_list(value) for value in explained.to_numpy()[first["alert"].to_numpy()]]
    changed = faults[SENSORS_COLUMN].to_numpy()[first["fault"].to_numpy()]
    hit = np.array([top is not None and top[0]["sensor"] in sensors for top, sensors in zip(tops, changed)],
                   dtype=bool)
    kinds = first["fault_type"].astype(str).to_numpy()

    def counts(rows: np.ndarray) -> dict[str, Any]:
        n, right = int(rows.sum()), int(hit[rows].sum())
        return {"incidents": n, "top_sensor_changed": right, "share": _ratio(right, n)}

    return {
        "tolerance_s": float(tolerance_s),
        **counts(np.ones(len(first), dtype=bool)),
        "unexplained": sum(top is None for top in tops),
        "by_fault_type": {kind: counts(kinds == kind) for kind in sorted(set(kinds))},
    }


def row_scores(predictions: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """Row-level precision, recall, F1, false-alarm rate (FP / negatives) and missed-alarm rate (FN / positives)
    of ``is_anomaly`` against ``label``, joined on ``event_id`` (first row per id on each side)."""
    pred = predictions[["event_id", "is_anomaly"]].drop_duplicates("event_id")
    lab = truth[["event_id", "label"]].drop_duplicates("event_id")
    joined = pred.merge(lab, on="event_id", how="inner")
    p = joined["is_anomaly"].to_numpy() == 1
    y = joined["label"].to_numpy() == 1
    tp, fp = int(np.sum(p & y)), int(np.sum(p & ~y))
    fn, tn = int(np.sum(~p & y)), int(np.sum(~p & ~y))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "far": _ratio(fp, fp + tn),
        "mar": _ratio(fn, fn + tp),
        "counts": {"rows": len(joined), "unmatched_predictions": len(pred) - len(joined),
                   "tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }


def latency_percentiles(predictions: pd.DataFrame) -> dict[str, Any]:
    """p50/p95/p99/max of ``processing_time - received_at`` in milliseconds (linear interpolation), with ``n``."""
    ms = (predictions["processing_time"].to_numpy(dtype=float) - predictions["received_at"].to_numpy(dtype=float)) * 1e3
    ms = ms[np.isfinite(ms)]
    if not len(ms):
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": int(len(ms)), "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "max_ms": float(ms.max())}


def reconcile(events_in: int, n_predictions: int, n_dead_letters: int) -> dict[str, Any]:
    """Every event in must come out once, as a prediction or a dead letter; ``missing`` < 0 means duplicates."""
    missing = int(events_in) - int(n_predictions) - int(n_dead_letters)
    return {"events_in": int(events_in), "predictions": int(n_predictions), "dead_letters": int(n_dead_letters),
            "missing": missing, "balanced": missing == 0}
