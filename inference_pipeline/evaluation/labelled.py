"""Grading 0/1 predictions against 0/1 labels on labelled time series (``iotml benchmark``).

Point-wise: precision, recall, F1, false-alarm rate (FAR % = FP / negatives) and missed-alarm rate (MAR % = FN /
positives), pooled over every graded row of every series: SKAB's published outlier-detection protocol. Event-wise:
an event is a maximal run of label-1 rows, an alarm a maximal run of flagged rows; an event is detected when one of
its rows is flagged (delay: its first flagged row's time minus its first row's), an alarm is true when it overlaps an
event. Rows before a series' ``test_from`` (its training rows) are not graded; an event they cut counts from
``test_from`` on.

Ratios whose denominator is zero (no positives, no alarms, ...) are 0.0, as SKAB's tables count them; detection
delays with no detected event are None (NaN in the per-series table).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Outlier-detection leaderboard of SKAB v0.9 (method, F1, FAR %, MAR %), pooled over the test rows of all 34 runs:
# I. Katser and V. Kozitsin, "Skoltech Anomaly Benchmark (SKAB)", Kaggle 2020, doi:10.34740/KAGGLE/DSV/1693952;
# README of github.com/waico/SKAB.
SKAB_LEADERBOARD: tuple[tuple[str, float, float, float], ...] = (
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T²+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T²", 0.66, 19.21, 42.6),
    ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53),
    ("Vanilla AE", 0.39, 2.59, 75.15),
    ("MSCRED", 0.36, 49.94, 69.88),
    ("Isolation Forest", 0.29, 2.56, 82.89),
)
OUR_ROW = "this run"
EVENT_COUNTS: tuple[str, ...] = ("events", "detected", "alarms", "true_alarms")
SERIES_COLUMNS: tuple[str, ...] = ("name", "rows", "anomalous_rows", "f1", "far_pct", "mar_pct", "events",
                                   "detected_events", "false_alarms", "median_delay_s")
LABEL_COLOR = "tab:red"
FLAG_COLOR = "tab:blue"
SCORE_COLOR = "black"
PANEL_W_IN = 3.2
PANEL_H_IN = 1.7
DPI = 80


def _binary(values: Any, what: str) -> np.ndarray:
    """A 1-d 0/1 (or boolean) array as booleans; anything else (NaN included) raises ValueError."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{what} must hold only 0 and 1")
    return array.astype(bool)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def point_metrics(labels: Any, flags: Any) -> dict[str, float | int]:
    """Row-wise tp, fp, fn, tn, precision, recall, f1, far_pct (100 FP / (FP + TN)) and mar_pct
    (100 FN / (FN + TP)) of 0/1 ``flags`` against 0/1 ``labels``; a zero denominator gives 0.0."""
    y, p = _binary(labels, "labels"), _binary(flags, "flags")
    if len(y) != len(p):
        raise ValueError(f"labels and flags differ in length: {len(y)} != {len(p)}")
    tp, fp = int(np.sum(p & y)), int(np.sum(p & ~y))
    fn, tn = int(np.sum(~p & y)), int(np.sum(~p & ~y))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall,
            "f1": _f1(precision, recall), "far_pct": 100 * _ratio(fp, fp + tn), "mar_pct": 100 * _ratio(fn, fn + tp)}


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) row of each maximal run of True."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _hits(mask: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each row range [start, end) holds a True of ``mask``."""
    counts = np.concatenate(([0], np.cumsum(mask)))
    return counts[ends] > counts[starts]


def _event_summary(counts: dict[str, int], delays_s: np.ndarray, delays_rows: np.ndarray) -> dict[str, Any]:
    """Event counts and delays -> the event metrics dict (precision over alarms, recall over events)."""
    precision = _ratio(counts["true_alarms"], counts["alarms"])
    recall = _ratio(counts["detected"], counts["events"])
    return {**counts, "false_alarms": counts["alarms"] - counts["true_alarms"], "precision": precision,
            "recall": recall, "f1": _f1(precision, recall), "delays_s": delays_s, "delays_rows": delays_rows}


def event_metrics(labels: Any, flags: Any, times: Any) -> dict[str, Any]:
    """Event-wise counts (events, detected, alarms, true_alarms, false_alarms), precision (true alarms / alarms),
    recall (detected / events), f1, and per detected event its delay in seconds (``delays_s``, from ``times``)
    and rows (``delays_rows``), in event order. One alarm may detect several events."""
    y, p = _binary(labels, "labels"), _binary(flags, "flags")
    t = np.asarray(times, dtype=np.float64)
    if not len(y) == len(p) == len(t):
        raise ValueError(f"labels, flags and times differ in length: {len(y)}, {len(p)}, {len(t)}")
    ev_start, ev_end = _runs(y)
    al_start, al_end = _runs(p)
    detected = _hits(p, ev_start, ev_end)
    flagged = np.flatnonzero(p)
    first = flagged[np.searchsorted(flagged, ev_start[detected])]
    counts = {"events": len(ev_start), "detected": int(detected.sum()), "alarms": len(al_start),
              "true_alarms": int(_hits(y, al_start, al_end).sum())}
    return _event_summary(counts, t[first] - t[ev_start[detected]], first - ev_start[detected])


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


@dataclasses.dataclass
class SeriesResult:
    """One series' predictions: 0/1 ``labels`` and ``flags``, ``scores`` and epoch-second ``times`` per row;
    rows before ``test_from`` are training rows, not graded."""

    name: str
    times: np.ndarray
    labels: np.ndarray
    flags: np.ndarray
    scores: np.ndarray
    test_from: int = 0

    def __post_init__(self) -> None:
        self.times = np.asarray(self.times, dtype=np.float64)
        self.labels = _binary(self.labels, f"{self.name}: labels").astype(np.int8)
        self.flags = _binary(self.flags, f"{self.name}: flags").astype(np.int8)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        n = len(self.times)
        if not len(self.labels) == len(self.flags) == len(self.scores) == n:
            raise ValueError(f"{self.name}: times, labels, flags and scores differ in length: {n}, "
                             f"{len(self.labels)}, {len(self.flags)}, {len(self.scores)}")
        if not 0 <= self.test_from <= n:
            raise ValueError(f"{self.name}: test_from {self.test_from} outside 0..{n}")

    def graded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, flags and times of the graded rows (from ``test_from`` on)."""
        cut = slice(self.test_from, None)
        return self.labels[cut], self.flags[cut], self.times[cut]


@dataclasses.dataclass
class BenchmarkReport:
    """Graded predictions: pooled point and event metrics, detection delays (None with no detected event),
    one row per series (``SERIES_COLUMNS``), the always-anomalous baseline's pooled point metrics."""

    point: dict[str, float | int]
    events: dict[str, Any]
    median_delay_s: float | None
    mean_delay_s: float | None
    median_delay_rows: float | None
    mean_delay_rows: float | None
    per_series: pd.DataFrame
    baseline: dict[str, float | int]
    runs: int
    test_rows: int


def grade(results: Sequence[SeriesResult]) -> BenchmarkReport:
    """Point metrics pooled over every graded row of every series, event metrics summed over series, delays pooled
    over every detected event, the per-series table and the always-anomalous baseline."""
    graded = [r.graded() for r in results]
    labels = np.concatenate([np.zeros(0, np.int8), *(g[0] for g in graded)])
    flags = np.concatenate([np.zeros(0, np.int8), *(g[1] for g in graded)])
    per_point = [point_metrics(y, p) for y, p, _ in graded]
    per_event = [event_metrics(y, p, t) for y, p, t in graded]
    table = pd.DataFrame({
        "name": [r.name for r in results],
        "rows": [len(y) for y, _, _ in graded],
        "anomalous_rows": [int(y.sum()) for y, _, _ in graded],
        **{key: [m[key] for m in per_point] for key in ("f1", "far_pct", "mar_pct")},
        "events": [e["events"] for e in per_event],
        "detected_events": [e["detected"] for e in per_event],
        "false_alarms": [e["false_alarms"] for e in per_event],
        "median_delay_s": [np.median(e["delays_s"]) if e["detected"] else np.nan for e in per_event],
    }, columns=list(SERIES_COLUMNS))
    delays_s = np.concatenate([np.zeros(0), *(e["delays_s"] for e in per_event)])
    delays_rows = np.concatenate([np.zeros(0, np.int64), *(e["delays_rows"] for e in per_event)])
    events = _event_summary({key: sum(e[key] for e in per_event) for key in EVENT_COUNTS}, delays_s, delays_rows)
    return BenchmarkReport(
        point=point_metrics(labels, flags), events=events,
        median_delay_s=_median(delays_s), mean_delay_s=_mean(delays_s),
        median_delay_rows=_median(delays_rows), mean_delay_rows=_mean(delays_rows),
        per_series=table, baseline=point_metrics(labels, np.ones_like(labels)),
        runs=len(results), test_rows=len(labels),
    )


def _num(value: Any, digits: int) -> str:
    """A number with ``digits`` decimals; None or NaN as n/a."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,),
                indent: str = "  ") -> list[str]:
    """Aligned plain-text lines: the ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return indent + "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), indent + "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _point_line(m: dict[str, float | int]) -> str:
    return (f"F1 {m['f1']:.4f}   FAR {m['far_pct']:.2f} %   MAR {m['mar_pct']:.2f} %   "
            f"precision {m['precision']:.4f}   recall {m['recall']:.4f}")


def _leaderboard_rows(report: BenchmarkReport,
                      leaderboard: Sequence[tuple[str, float, float, float]]) -> list[list[str]]:
    """Leaderboard rows by F1 (descending, stable), ours inserted after every entry with an F1 at least ours."""
    ours = (OUR_ROW, report.point["f1"], report.point["far_pct"], report.point["mar_pct"])
    entries = sorted(leaderboard, key=lambda e: -e[1])
    at = sum(1 for e in entries if e[1] >= ours[1])
    ranked = [*entries[:at], ours, *entries[at:]]
    return [["*" if e is ours else "", str(i), e[0], _num(e[1], 4 if e is ours else 2), _num(e[2], 2),
             _num(e[3], 2)] for i, e in enumerate(ranked, start=1)]


def format_report(report: BenchmarkReport, leaderboard: Sequence[tuple[str, float, float, float]] | None = None,
                  title: str = "") -> str:
    """Plain-text report: pooled point and event figures, detection delays, the always-anomalous baseline, one row
    per series and, given a ``leaderboard`` of (method, F1, FAR %, MAR %), it ranked by F1 with this run marked."""
    p, e = report.point, report.events
    anomalous = p["tp"] + p["fn"]
    lines = [title] if title else []
    lines += [
        f"Graded {report.test_rows} rows of {report.runs} series; {anomalous} anomalous "
        f"({100 * _ratio(anomalous, report.test_rows):.1f} %)",
        f"  point-wise (pooled):  {_point_line(p)}",
        f"  event-wise:           {e['detected']} of {e['events']} events detected (recall {e['recall']:.4f}); "
        f"{e['true_alarms']} of {e['alarms']} alarms on an event (precision {e['precision']:.4f}); "
        f"F1 {e['f1']:.4f}",
        f"  detection delay:      median {_num(report.median_delay_s, 1)} s ({_num(report.median_delay_rows, 1)} "
        f"rows), mean {_num(report.mean_delay_s, 1)} s ({_num(report.mean_delay_rows, 1)} rows)",
        f"  always anomalous:     {_point_line(report.baseline)}",
        "",
        "Per series:",
    ]
    s = report.per_series
    lines += _text_table(
        ["series", "rows", "anomalous", "F1", "FAR %", "MAR %", "events", "detected", "false alarms", "delay s"],
        [[str(r.name), str(r.rows), str(r.anomalous_rows), _num(r.f1, 4), _num(r.far_pct, 2), _num(r.mar_pct, 2),
          str(r.events), str(r.detected_events), str(r.false_alarms), _num(r.median_delay_s, 1)]
         for r in s.itertuples(index=False)],
    )
    if leaderboard is not None:
        lines += ["", "Leaderboard (point-wise, pooled; * = this run):"]
        lines += _text_table(["", "#", "method", "F1", "FAR %", "MAR %"], _leaderboard_rows(report, leaderboard),
                              left=(0, 2))
    return "\n".join(lines) + "\n"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def summary_json(report: BenchmarkReport) -> dict[str, Any]:
    """The headline figures as JSON-ready values: f1, far_pct, mar_pct, runs, test_rows first (f1 to 4 decimals,
    percentages to 2), then event_precision, event_recall, event_f1 and median_delay_s."""
    return {
        "f1": _round(report.point["f1"], 4),
        "far_pct": _round(report.point["far_pct"], 2),
        "mar_pct": _round(report.point["mar_pct"], 2),
        "runs": int(report.runs),
        "test_rows": int(report.test_rows),
        "event_precision": _round(report.events["precision"], 4),
        "event_recall": _round(report.events["recall"], 4),
        "event_f1": _round(report.events["f1"], 4),
        "median_delay_s": _round(report.median_delay_s, 3),
    }


def _bands(ax: Any, mask: np.ndarray, edges: np.ndarray, y: tuple[float, float], color: str, alpha: float) -> None:
    """Shade each run of ``mask`` rows across ``y`` (axes fraction); row i spans edges[i]..edges[i+1]."""
    starts, ends = _runs(mask)
    if len(starts):
        spans = np.column_stack([edges[starts], edges[ends] - edges[starts]])
        ax.broken_barh(spans, y, transform=ax.get_xaxis_transform(), color=color, alpha=alpha, lw=0)


def plot(results: Sequence[SeriesResult], path: str | Path, max_series: int = 40) -> Path:
    """One PNG, one small panel per series (the first ``max_series``): the anomaly score, labelled rows shaded red,
    flagged rows as a blue band along the bottom, a dashed line where grading starts; minutes since the series'
    first row on the x axis. The title holds the pooled figures over all ``results``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = grade(results)
    shown = list(results)[: max(0, max_series)]
    ncols = max(1, min(len(shown), math.ceil(math.sqrt(len(shown)))))
    nrows = max(1, math.ceil(len(shown) / ncols))
    header_in = 0.6
    height = nrows * PANEL_H_IN + header_in
    fig = Figure(figsize=(ncols * PANEL_W_IN, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.3 / height, top=1 - header_in / height, hspace=0.55,
                        wspace=0.22)
    for i, r in enumerate(shown):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if len(r.times):
            minutes = (r.times - r.times[0]) / 60.0
            step = float(np.median(np.diff(minutes))) if len(minutes) > 1 else 1.0 / 60.0
            edges = np.append(minutes, minutes[-1] + step)
            _bands(ax, r.labels == 1, edges, (0.0, 1.0), LABEL_COLOR, 0.18)
            _bands(ax, r.flags == 1, edges, (0.0, 0.08), FLAG_COLOR, 0.9)
            ax.plot(minutes, r.scores, lw=0.5, color=SCORE_COLOR)
            if 0 < r.test_from < len(r.times):
                ax.axvline(minutes[r.test_from], color="gray", ls="--", lw=0.8)
            ax.set_xlim(edges[0], edges[-1])
        row = report.per_series.iloc[i]
        ax.set_title(f"{r.name}  F1 {_num(row.f1, 2)}", fontsize=7, loc="left", pad=2)
        ax.tick_params(labelsize=6, length=2, pad=1)
    if not shown:
        fig.text(0.5, 0.5, "no series to plot", ha="center", va="center")
    p = report.point
    fig.suptitle(f"{len(shown)} of {report.runs} series, {report.test_rows} graded rows: F1 {p['f1']:.4f}, "
                 f"FAR {p['far_pct']:.2f} %, MAR {p['mar_pct']:.2f} %, event F1 {report.events['f1']:.4f}   "
                 "(red: labelled, blue: flagged, dashed: grading starts; x: minutes)", fontsize=9,
                 y=1 - 0.1 / height, va="top")
    fig.savefig(path, dpi=DPI, format="png")
    return path
