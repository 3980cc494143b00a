"""Run report: a PNG of per-device sensors, scores, alerts and true faults; a self-contained HTML page; console text.

Every incident listed names its top sensors ("rpm 62%, pressure 21%, flow_rate 9%"): the HTML's incident table, and a
summary's ``incidents`` (``incident_records``, what summary.json lists) printed as a table by ``format_summary``."""
from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from datetime import timezone
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from inference_pipeline.evaluation.accuracy import MATCH_COLUMN, fault_intervals_from_truth, top_sensor_list

DPI = 90
PANEL_W_IN = 8.0
DEVICE_H_IN = 3.3
HEADER_IN = 0.6
LEGEND_ROW_IN = 0.25
LEGEND_COLS_PER_PANEL = 5
ALERT_COLOR = "tab:red"
FAULT_COLOR = "tab:orange"
SCORE_COLOR = "black"
THRESHOLD_COLOR = "tab:red"
MIN_SPAN_FRACTION = 0.004
SENSOR_COLORS = [*matplotlib.colormaps["tab10"].colors, *matplotlib.colormaps["tab20b"].colors]
_EPOCH_DAYS = float(mdates.date2num(np.datetime64("1970-01-01T00:00:00")))
INCIDENTS = "incidents"  # the summary's list of incidents (``incident_records``)
_INCIDENT_FIELDS = ("incident_id", "device_id", "kind", "sensor", "status", "start_time", "end_time", "peak_score",
                    "n_events", MATCH_COLUMN, "top_sensors")


def _days(ts: np.ndarray | pd.Series) -> np.ndarray:
    """Epoch seconds to matplotlib date numbers (UTC)."""
    return np.asarray(ts, dtype=float) / 86400.0 + _EPOCH_DAYS


def _plain(text: Any) -> str:
    """Text matplotlib draws literally (no mathtext)."""
    return str(text).replace("$", r"\$")


def _rank_devices(predictions: pd.DataFrame, alerts: pd.DataFrame, faults: pd.DataFrame,
                  truth: pd.DataFrame) -> list[Any]:
    """Devices by number of true faults, then alerts (both descending), then id."""
    ids = pd.unique(pd.concat([truth["device_id"], predictions["device_id"], alerts["device_id"]], ignore_index=True))
    rank = pd.DataFrame({
        "device_id": ids,
        "faults": faults["device_id"].value_counts().reindex(ids, fill_value=0).to_numpy(),
        "alerts": alerts["device_id"].value_counts().reindex(ids, fill_value=0).to_numpy(),
    })
    rank["key"] = rank["device_id"].astype(str)
    return rank.sort_values(["faults", "alerts", "key"], ascending=[False, False, True])["device_id"].tolist()


def _spans(ax: Axes, starts: np.ndarray, ends: np.ndarray, min_width: float, color: str, alpha: float) -> None:
    for s, e in zip(starts, np.maximum(ends, starts + min_width)):
        ax.axvspan(s, e, color=color, alpha=alpha, lw=0)


def _plot_device(fig: Figure, cell: Any, device: Any, truth: pd.DataFrame | None, pred: pd.DataFrame | None,
                 alerts: pd.DataFrame | None, faults: pd.DataFrame | None, sensors: Sequence[str]) -> None:
    """Sensor panel over score panel for one device, with alert and fault spans on both."""
    grid = cell.subgridspec(2, 1, height_ratios=[3, 2], hspace=0.06)
    ax_s = fig.add_subplot(grid[0])
    ax_a = fig.add_subplot(grid[1], sharex=ax_s)
    times = [_days(d[c]) for d, c in ((truth, "ts"), (pred, "event_time")) if d is not None and len(d)]
    t_all = np.concatenate(times) if times else np.array([0.0])
    t_last = float(np.nanmax(t_all))
    min_width = max(float(np.nanmax(t_all) - np.nanmin(t_all)), 1 / 1440) * MIN_SPAN_FRACTION

    if truth is not None and len(truth) and sensors:
        values = truth[list(sensors)].to_numpy(dtype=float)
        sd = np.nanstd(values, axis=0)
        z = (values - np.nanmean(values, axis=0)) / np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        ax_s.set_prop_cycle(color=[SENSOR_COLORS[i % len(SENSOR_COLORS)] for i in range(len(sensors))])
        ax_s.plot(_days(truth["ts"]), z, lw=0.6)
    if pred is not None and len(pred):
        x = _days(pred["event_time"])
        score = pred["anomaly_score"].to_numpy(dtype=float)
        ax_a.plot(x, score, lw=0.6, color=SCORE_COLOR)
        ax_a.step(x, pred["threshold"].to_numpy(dtype=float), where="post", ls="--", lw=1.0, color=THRESHOLD_COLOR)
        flagged = pred["is_anomaly"].to_numpy() == 1
        ax_a.scatter(x[flagged], score[flagged], s=4, color=THRESHOLD_COLOR, zorder=3)
    if faults is not None and len(faults):
        f_start, f_end = _days(faults["start_ts"]), _days(faults["end_ts"])
        for ax in (ax_s, ax_a):
            _spans(ax, f_start, f_end, min_width, FAULT_COLOR, 0.25)
        for x0, kind in zip(f_start, faults["fault_type"]):
            ax_s.text(x0, 0.97, _plain(kind), transform=ax_s.get_xaxis_transform(), fontsize=7, va="top",
                      color="saddlebrown", clip_on=True)
    if alerts is not None and len(alerts):
        a_start = _days(alerts["start_time"])
        a_end = _days(alerts["end_time"]) if "end_time" in alerts else np.full(len(a_start), np.nan)
        a_end = np.where(np.isnan(a_end), np.maximum(t_last, a_start), a_end)
        for ax in (ax_s, ax_a):
            _spans(ax, a_start, a_end, min_width, ALERT_COLOR, 0.2)

    n_faults = 0 if faults is None else len(faults)
    n_alerts = 0 if alerts is None else len(alerts)
    ax_s.set_title(f"{_plain(device)}   faults: {n_faults}   alerts: {n_alerts}", fontsize=9, loc="left")
    ax_s.set_ylabel("z-score", fontsize=8)
    ax_s.tick_params(labelbottom=False, labelsize=7)
    ax_a.set_ylim(-0.03, 1.03)
    ax_a.set_ylabel("score", fontsize=8)
    ax_a.tick_params(labelsize=7)
    locator = mdates.AutoDateLocator(tz=timezone.utc, maxticks=8)
    ax_a.xaxis.set_major_locator(locator)
    ax_a.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))
    ax_a.xaxis.get_offset_text().set_fontsize(7)
    ax_a.margins(x=0.01)


def _legend_handles(sensors: Sequence[str]) -> list[Line2D | Patch]:
    handles: list[Line2D | Patch] = [
        Line2D([], [], color=SENSOR_COLORS[i % len(SENSOR_COLORS)], lw=1.2, label=_plain(s))
        for i, s in enumerate(sensors)
    ]
    return handles + [
        Line2D([], [], color=SCORE_COLOR, lw=1.2, label="anomaly score"),
        Line2D([], [], color=THRESHOLD_COLOR, ls="--", lw=1, label="threshold"),
        Line2D([], [], color=THRESHOLD_COLOR, marker="o", ms=3, ls="", label="flagged"),
        Patch(color=ALERT_COLOR, alpha=0.3, label="alert incident"),
        Patch(color=FAULT_COLOR, alpha=0.35, label="true fault"),
    ]


def plot_devices(predictions: pd.DataFrame, alerts: pd.DataFrame, truth: pd.DataFrame, sensors: Sequence[str],
                 path: str | Path, max_devices: int = 12) -> Path:
    """One PNG, two devices across: per device, z-normalised sensors over the anomaly score with its threshold;
    alert incidents shaded red (open ones up to the device's last event), true faults shaded orange and labelled;
    UTC time axis. Most-faulted devices first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faults = fault_intervals_from_truth(truth)
    ranked = _rank_devices(predictions, alerts, faults, truth)
    devices = ranked[: max(0, max_devices)]
    ncols = 1 if len(devices) <= 1 else 2
    nrows = max(1, math.ceil(len(devices) / ncols))
    handles = _legend_handles(sensors)
    legend_cols = min(len(handles), LEGEND_COLS_PER_PANEL * ncols)
    header = HEADER_IN + LEGEND_ROW_IN * math.ceil(len(handles) / legend_cols)
    height = nrows * DEVICE_H_IN + header
    fig = Figure(figsize=(ncols * PANEL_W_IN, height), dpi=DPI)
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(nrows, ncols, left=0.06 / ncols, right=0.99, top=1 - header / height,
                             bottom=0.35 / height, hspace=0.42, wspace=0.14)
    groups = {name: dict(tuple(df.groupby("device_id", sort=False))) for name, df in
              (("truth", truth.sort_values("ts")), ("pred", predictions.sort_values("event_time")),
               ("alerts", alerts), ("faults", faults))}
    for i, dev in enumerate(devices):
        _plot_device(fig, outer[i // ncols, i % ncols], dev, groups["truth"].get(dev), groups["pred"].get(dev),
                     groups["alerts"].get(dev), groups["faults"].get(dev), sensors)
    if not devices:
        fig.text(0.5, 0.5, "no devices to plot", ha="center", va="center")
    title = f"Sensors (z-scored per device) and anomaly scores: {len(devices)} of {len(ranked)} device(s)"
    fig.suptitle(f"{title}, most faults first", fontsize=11, y=1 - 0.08 / height, va="top")
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.35 / height),
               ncol=legend_cols, fontsize=8, frameon=False)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _flatten(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _fmt(value: Any) -> str:
    """A summary value as short text: None/NaN as n/a, floats to at most 4 decimals."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return str(v)
        if v == int(v):
            return str(int(v))
        if abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _utc(ts: Any) -> str:
    if ts is None or pd.isna(ts):
        return "open"
    return pd.Timestamp(float(ts), unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def top_sensors_text(value: Any) -> str:
    """An incident's top sensors as ``rpm 62%, pressure 21%, flow_rate 9%`` (from the list or its JSON text); ``n/a``
    when it has none."""
    top = top_sensor_list(value)
    return "n/a" if top is None else ", ".join(f"{item['sensor']} {100 * float(item['share']):.0f}%" for item in top)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def incident_records(alerts: pd.DataFrame) -> list[dict[str, Any]]:
    """The incidents by start time as JSON-ready records (what a summary lists under ``incidents``): id, device,
    kind, times, peak, the true fault matched (``match_alerts``) if known, and the top sensors as a list."""
    df = alerts.sort_values("start_time", kind="stable")
    fields = [name for name in _INCIDENT_FIELDS if name in df]
    records = []
    for row in df[fields].to_dict("records"):
        record = {k: None if _missing(v) else v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
        if "top_sensors" in record:
            record["top_sensors"] = top_sensor_list(record["top_sensors"])
        records.append(record)
    return records


def _alert_rows(alerts: pd.DataFrame | Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The incident table (an alerts frame or ``incident_records``): header and rows of text."""
    if not isinstance(alerts, pd.DataFrame):
        alerts = pd.DataFrame(list(alerts)) if len(alerts) else pd.DataFrame(columns=["device_id", "start_time"])
    df = alerts.sort_values("start_time", kind="stable")
    start = df["start_time"].to_numpy(dtype=float)
    end = df["end_time"].to_numpy(dtype=float) if "end_time" in df else np.full(len(df), np.nan)
    peak = df["peak_score"].to_numpy(dtype=float) if "peak_score" in df else np.full(len(df), np.nan)
    headers = ["device", "start (UTC)", "end (UTC)", "duration (s)", "peak score"]
    columns = [df["device_id"].astype(str).tolist(), [_utc(t) for t in start], [_utc(t) for t in end],
               [_fmt(d) if np.isfinite(d) else "open" for d in end - start], [_fmt(p) for p in peak]]
    if MATCH_COLUMN in df:
        headers.append("true fault")
        columns.append(["false alarm" if v is None or pd.isna(v) else str(v) for v in df[MATCH_COLUMN]])
    if "top_sensors" in df:
        headers.append("top sensors")
        columns.append([top_sensors_text(v) for v in df["top_sensors"]])
    return headers, [list(r) for r in zip(*columns)]


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#f2f2f2}td:nth-child(n+2){font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd}"""


def write_html(summary: Mapping[str, Any], png_path: str | Path | None, path: str | Path, alerts: pd.DataFrame,
               dead_letter_counts: Mapping[str, int]) -> Path:
    """A single self-contained HTML report: summary table, embedded PNG, alert incidents, dead letters by reason."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in summary.items() if k != INCIDENTS}  # the incident table below lists them
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>Run report</title>',
             f"<style>{_CSS}</style></head><body>", "<h1>Run report</h1>", "<h2>Summary</h2>",
             _table(["metric", "value"], [(k, _fmt(v)) for k, v in _flatten(metrics).items()])]
    if png_path is not None and Path(png_path).is_file():
        data = base64.b64encode(Path(png_path).read_bytes()).decode("ascii")
        parts += ["<h2>Devices</h2>", f'<img alt="per-device plots" src="data:image/png;base64,{data}">']
    headers, rows = _alert_rows(alerts)
    parts += [f"<h2>Alert incidents ({len(rows)})</h2>", _table(headers, rows) if rows else "<p>No alerts.</p>"]
    dead = sorted(dead_letter_counts.items(), key=lambda kv: (-int(kv[1]), str(kv[0])))
    parts += [f"<h2>Dead letters ({sum(int(n) for _, n in dead)})</h2>",
              _table(["reason", "count"], dead) if dead else "<p>No dead letters.</p>", "</body></html>"]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def text_table(rows: Sequence[Sequence[Any]]) -> str:
    """Rows (the first a header) as left-aligned columns two spaces apart."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(*rows)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as aligned ``key  value`` lines (nested keys dotted), a blank line between top-level sections;
    its ``incidents`` (``incident_records``) last, as a table with their top sensors."""
    flat = _flatten({k: v for k, v in summary.items() if k != INCIDENTS})
    if not flat and INCIDENTS not in summary:
        return "(empty summary)"
    width = max((len(k) for k in flat), default=0)
    lines: list[str] = []
    section = None
    for key, value in flat.items():
        top = key.split(".", 1)[0] if "." in key else None
        if lines and top != section:
            lines.append("")
        section = top
        lines.append(f"{key:<{width}}  {_fmt(value)}")
    if INCIDENTS in summary:
        headers, rows = _alert_rows(summary[INCIDENTS])
        lines += [""] * bool(lines) + [f"{INCIDENTS} ({len(rows)})"] + [text_table([headers, *rows])] * bool(rows)
    return "\n".join(lines)
