"""Run report: the device PNG, the self-contained HTML page and the console summary."""
from __future__ import annotations

import base64
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inference_pipeline.evaluation.accuracy import MATCH_COLUMN
from inference_pipeline.evaluation.report import (
    _rank_devices,
    format_summary,
    incident_records,
    plot_devices,
    top_sensors_text,
    write_html,
)

SENSORS = ["flow_rate", "pressure", "vibration_rms"]
T0 = 1_767_225_600.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY = {
    "events_in": 42,
    "incident": {"precision": 2 / 3, "counts": {"alerts": 3}},
    "latency": {"p99_ms": None},
    "reconcile": {"balanced": True},
}


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _frames(devices: list[str], n: int = 120) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per device, ``n`` events 5 s apart; device k has k faults of 10 events each."""
    rng = np.random.default_rng(7)
    truth, preds, alerts = [], [], []
    for k, dev in enumerate(devices):
        ts = T0 + 5.0 * np.arange(n)
        label = np.zeros(n, dtype=int)
        for j in range(k):
            label[10 + 30 * j: 20 + 30 * j] = 1
        score = np.clip(0.2 + 0.6 * label + rng.normal(0, 0.05, n), 0, 1)
        ids = [f"{dev}-{i}" for i in range(n)]
        truth.append(pd.DataFrame({"event_id": ids, "device_id": dev, "ts": ts, "label": label,
                                   "fault_type": np.where(label == 1, "leak", "none"),
                                   **{s: rng.normal(size=n).cumsum() for s in SENSORS}}))
        preds.append(pd.DataFrame({"event_id": ids, "device_id": dev, "event_time": ts, "received_at": ts + 0.01,
                                   "processing_time": ts + 0.02, "anomaly_score": score, "raw_score": score,
                                   "threshold": 0.5, "is_anomaly": (score > 0.5).astype(int),
                                   "model_name": "m", "model_version": "1"}))
        if k:
            alerts.append(pd.DataFrame({"incident_id": [f"{dev}-a"], "device_id": [dev], "start_time": [ts[12]],
                                        "end_time": [ts[22] if k % 2 else math.nan], "peak_score": [0.9],
                                        "n_events": [10], "status": ["closed" if k % 2 else "open"],
                                        "model_name": ["m"], "model_version": ["1"]}))
    return tuple(pd.concat(frames, ignore_index=True) for frames in (preds, alerts, truth))


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    predictions, alerts, truth = _frames(["pump-a", "pump-b", "pump-c"])
    return plot_devices(predictions, alerts, truth, SENSORS, tmp_path_factory.mktemp("report") / "devices.png")


def test_plot_devices_writes_a_real_png(png: Path):
    width, height = _png_size(png)
    assert png.stat().st_size > 20_000
    assert 600 <= width <= 2500 and 300 <= height <= 2500


def test_plot_devices_caps_devices_and_height(tmp_path: Path):
    predictions, alerts, truth = _frames([f"d{k:02d}" for k in range(14)], n=60)
    few = _png_size(plot_devices(predictions, alerts, truth, SENSORS, tmp_path / "few.png", max_devices=2))
    many = _png_size(plot_devices(predictions, alerts, truth, SENSORS, tmp_path / "many.png", max_devices=12))
    assert many[1] <= 2500
    assert many[1] > 3 * few[1]


def test_plot_devices_survives_mathtext_like_ids_and_no_data(tmp_path: Path):
    predictions, alerts, truth = _frames([r"a$\bad$", "b"])
    alerts = pd.concat([alerts, alerts.assign(device_id="only-alert")], ignore_index=True)
    out = plot_devices(predictions, alerts, truth, SENSORS, tmp_path / "odd.png")
    assert _png_size(out)[0] > 0


def test_rank_devices_puts_most_faulted_first():
    predictions, alerts, truth = _frames(["zero", "one", "two", "three"])
    faults = pd.DataFrame({"device_id": ["two", "three", "two", "three", "three", "one"]})
    assert _rank_devices(predictions, alerts, faults, truth) == ["three", "two", "one", "zero"]


def _html(tmp_path: Path, png: Path, alerts: pd.DataFrame) -> str:
    out = write_html(SUMMARY, png, tmp_path / "report.html", alerts, {"bad_json": 2, "<b>odd": 1})
    return out.read_text(encoding="utf-8")


def _alerts_with_script_id() -> pd.DataFrame:
    return pd.DataFrame({"incident_id": ["i1", "i2"], "device_id": ["<script>alert(1)</script>", "pump-a"],
                         "start_time": [T0 + 60, T0], "end_time": [T0 + 150, math.nan], "peak_score": [0.75, 0.9],
                         "n_events": [4, 2], "status": ["closed", "open"], MATCH_COLUMN: [None, "leak"]})


def test_write_html_contains_flattened_summary(tmp_path: Path, png: Path):
    text = _html(tmp_path, png, _alerts_with_script_id())
    assert "<td>events_in</td><td>42</td>" in text
    assert "<td>incident.precision</td><td>0.6667</td>" in text
    assert "<td>incident.counts.alerts</td><td>3</td>" in text
    assert "<td>latency.p99_ms</td><td>n/a</td>" in text
    assert "<td>reconcile.balanced</td><td>True</td>" in text


def test_write_html_escapes_everything(tmp_path: Path, png: Path):
    text = _html(tmp_path, png, _alerts_with_script_id())
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;b&gt;odd" in text and "<b>" not in text


def test_write_html_alert_table(tmp_path: Path, png: Path):
    text = _html(tmp_path, png, _alerts_with_script_id())
    assert "<th>true fault</th>" in text
    rows = text.split("<tr>")
    first = next(r for r in rows if "pump-a" in r)
    second = next(r for r in rows if "alert(1)" in r)
    assert text.index("pump-a</td>") < text.index("alert(1)")
    assert "<td>2026-01-01 00:00:00</td><td>open</td><td>open</td><td>0.9</td><td>leak</td>" in first
    assert ("<td>2026-01-01 00:01:00</td><td>2026-01-01 00:02:30</td><td>90</td><td>0.75</td>"
            "<td>false alarm</td>") in second
    assert "<td>bad_json</td><td>2</td>" in text and "Dead letters (3)" in text


def test_write_html_without_match_column(tmp_path: Path, png: Path):
    text = _html(tmp_path, png, _alerts_with_script_id().drop(columns=[MATCH_COLUMN]))
    assert "true fault" not in text


def test_write_html_is_self_contained(tmp_path: Path, png: Path):
    text = _html(tmp_path, png, _alerts_with_script_id())
    assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode('ascii')}" in text
    assert "http://" not in text and "https://" not in text and "<link" not in text


def test_format_summary_lists_every_value():
    lines = format_summary(SUMMARY).splitlines()
    flat = {line.split()[0]: line.split()[1] for line in lines if line.strip()}
    assert flat == {"events_in": "42", "incident.precision": "0.6667", "incident.counts.alerts": "3",
                    "latency.p99_ms": "n/a", "reconcile.balanced": "True"}


WHY = '[{"sensor":"rpm","share":0.6243},{"sensor":"pressure","share":0.21},{"sensor":"flow_rate","share":0.0912}]'


def _explained_alerts() -> pd.DataFrame:
    """An anomaly explained (its top sensors as the results table holds them, JSON text), a missing sensor, and an
    anomaly of a model without contributions."""
    return _alerts_with_script_id().assign(
        device_id=["pump-b", "pump-a"], kind=["anomaly", "sensor_missing"], sensor=[None, "flow_rate"],
        top_sensors=[WHY, '[{"sensor":"flow_rate","share":1.0}]'])


def test_top_sensors_read_as_percentages():
    assert top_sensors_text(WHY) == "rpm 62%, pressure 21%, flow_rate 9%"
    assert top_sensors_text(json.loads(WHY)[:1]) == "rpm 62%"
    assert top_sensors_text(None) == top_sensors_text(math.nan) == top_sensors_text("[]") == "n/a"


def test_write_html_lists_each_incidents_top_sensors(tmp_path: Path, png: Path):
    alerts = pd.concat([_explained_alerts(), _explained_alerts().iloc[:1].assign(incident_id="i3", top_sensors=None)])
    text = _html(tmp_path, png, alerts)
    assert "<th>top sensors</th>" in text
    rows = [row for row in text.split("<tr>") if "pump-b" in row]
    assert "<td>false alarm</td><td>rpm 62%, pressure 21%, flow_rate 9%</td>" in rows[0]
    assert "<td>n/a</td>" in rows[1]
    assert "<td>leak</td><td>flow_rate 100%</td>" in next(row for row in text.split("<tr>") if "pump-a" in row)


def test_summary_incidents_are_json_records_printed_with_their_top_sensors(tmp_path: Path, png: Path):
    incidents = incident_records(_explained_alerts())
    assert [i["incident_id"] for i in incidents] == ["i2", "i1"]  # by start time
    assert incidents[1] == {"incident_id": "i1", "device_id": "pump-b", "kind": "anomaly", "sensor": None,
                            "status": "closed", "start_time": T0 + 60, "end_time": T0 + 150, "peak_score": 0.75,
                            "n_events": 4, MATCH_COLUMN: None, "top_sensors": json.loads(WHY)}
    assert incidents[0]["end_time"] is None and incidents[0]["top_sensors"] == [{"sensor": "flow_rate", "share": 1.0}]
    summary = json.loads(json.dumps({**SUMMARY, "incidents": incidents}))  # as summary.json holds it
    lines = format_summary(summary).splitlines()
    table = [re.split(r"\s{2,}", line) for line in lines[lines.index("incidents (2)") + 1:]]
    assert table == [
        ["device", "start (UTC)", "end (UTC)", "duration (s)", "peak score", "true fault", "top sensors"],
        ["pump-a", "2026-01-01 00:00:00", "open", "open", "0.9", "leak", "flow_rate 100%"],
        ["pump-b", "2026-01-01 00:01:00", "2026-01-01 00:02:30", "90", "0.75", "false alarm",
         "rpm 62%, pressure 21%, flow_rate 9%"]]
    assert "incident_id" not in format_summary(summary) and "events_in" in lines[0]
    assert format_summary({"incidents": []}) == "incidents (0)"
    text = write_html(summary, png, tmp_path / "report.html", _explained_alerts(), {}).read_text(encoding="utf-8")
    assert "<td>incidents</td>" not in text and "rpm 62%" in text
