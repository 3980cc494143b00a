"""Grading predictions on labelled series, on hand-built cases whose answers are worked out in the comments, and
reading labelled series from CSV files (small ones written here, and SKAB when ../shared/data/skab is present)."""
from __future__ import annotations

import logging
import struct
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inference_pipeline.evaluation.labelled import (
    SERIES_COLUMNS,
    SKAB_LEADERBOARD,
    BenchmarkReport,
    SeriesResult,
    event_metrics,
    format_report,
    grade,
    plot,
    point_metrics,
    summary_json,
)
from training.datasets import read_labelled_series

SKAB = Path(__file__).resolve().parents[4] / "shared" / "data" / "skab"
T0 = 1_767_225_600.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _series(name: str, labels: list[int], flags: list[int], test_from: int = 0, step_s: float = 10.0) -> SeriesResult:
    n = len(labels)
    return SeriesResult(name, T0 + step_s * np.arange(n), np.array(labels), np.array(flags),
                        np.linspace(0.0, 1.0, n), test_from=test_from)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ---- point-wise ----

def test_point_metrics_by_hand():
    # rows:    0  1  2  3  4  5  6  7  8  9
    labels = [0, 0, 1, 1, 1, 0, 0, 0, 1, 0]
    flags = [0, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    # tp rows 2,3; fp rows 1,9; fn rows 4,8; tn rows 0,5,6,7
    m = point_metrics(labels, flags)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 2, 2, 4)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert m["far_pct"] == pytest.approx(100 * 2 / 6)
    assert m["mar_pct"] == pytest.approx(50.0)


def test_point_metrics_zero_denominators_are_zero():
    quiet = point_metrics([0] * 5, [0] * 5)
    assert (quiet["tn"], quiet["precision"], quiet["recall"], quiet["f1"], quiet["far_pct"], quiet["mar_pct"]) == (
        5, 0.0, 0.0, 0.0, 0.0, 0.0)
    noisy = point_metrics([0, 0, 0, 0], [1, 0, 1, 0])
    assert (noisy["precision"], noisy["f1"], noisy["far_pct"], noisy["mar_pct"]) == (0.0, 0.0, 50.0, 0.0)
    missed = point_metrics([1, 1, 0], [0, 0, 0])
    assert (missed["precision"], missed["recall"], missed["far_pct"], missed["mar_pct"]) == (0.0, 0.0, 0.0, 100.0)


def test_point_metrics_refuse_non_binary_and_mismatched_input():
    with pytest.raises(ValueError, match="only 0 and 1"):
        point_metrics([0, 2], [0, 1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        point_metrics([0, 1], [0.0, np.nan])
    with pytest.raises(ValueError, match="length"):
        point_metrics([0, 1], [0, 1, 1])


# ---- event-wise ----

def test_event_metrics_by_hand():
    # rows:    0  1  2  3  4  5  6  7  8  9 10 11
    labels = [0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0]  # events: rows 1-3, 6-7, 10
    flags = [1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1]   # alarms: row 0, rows 3-4, rows 9-11
    times = 100.0 + 10.0 * np.arange(12)
    m = event_metrics(labels, flags, times)
    # event 1 first flagged at row 3 (2 rows, 20 s late); event 2 missed; event 3 flagged on its first row.
    # alarm row 0 touches no event (false); alarms 3-4 and 9-11 overlap events 1 and 3.
    assert (m["events"], m["detected"], m["alarms"], m["true_alarms"], m["false_alarms"]) == (3, 2, 3, 2, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(m["delays_s"], [20.0, 0.0])
    np.testing.assert_array_equal(m["delays_rows"], [2, 0])


def test_one_alarm_overlapping_two_events_detects_both():
    labels = [1, 1, 0, 1, 1, 0]  # events rows 0-1 and 3-4
    flags = [0, 1, 1, 1, 0, 0]   # one alarm, rows 1-3
    m = event_metrics(labels, flags, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    assert (m["events"], m["detected"], m["alarms"], m["true_alarms"], m["false_alarms"]) == (2, 2, 1, 1, 0)
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(m["delays_s"], [2.0, 0.0])
    np.testing.assert_array_equal(m["delays_rows"], [1, 0])


def test_delay_uses_time_not_rows_when_spacing_is_uneven():
    m = event_metrics([0, 1, 1, 1], [0, 0, 0, 1], [0.0, 1.0, 2.0, 62.0])
    np.testing.assert_allclose(m["delays_s"], [61.0])
    np.testing.assert_array_equal(m["delays_rows"], [2])


def test_test_from_cuts_an_event_and_hides_training_rows():
    # rows:          0  1  2 |3  4  5  6  7     (graded from row 3; rows 5 s apart)
    labels = [0, 1, 1, 1, 1, 0, 0, 0]
    flags = [1, 1, 0, 0, 1, 0, 1, 0]
    report = grade([_series("cut", labels, flags, test_from=3, step_s=5.0)])
    # graded labels 1 1 0 0 0, flags 0 1 0 1 0: tp row 4, fp row 6, fn row 3, tn rows 5 and 7.
    p = report.point
    assert (p["tp"], p["fp"], p["fn"], p["tn"]) == (1, 1, 1, 2)
    assert report.test_rows == 5 and report.runs == 1
    # The event starts at row 3 for grading: the flag at row 1 is a training row, so the delay is row 4 - row 3.
    e = report.events
    assert (e["events"], e["detected"], e["alarms"], e["true_alarms"]) == (1, 1, 2, 1)
    assert report.median_delay_s == pytest.approx(5.0) and report.median_delay_rows == pytest.approx(1.0)
    assert report.per_series.loc[0, "rows"] == 5 and report.per_series.loc[0, "anomalous_rows"] == 2


def test_no_anomalies_at_all():
    report = grade([_series("calm", [0] * 6, [0] * 6)])
    assert report.point["f1"] == 0.0 and report.point["far_pct"] == 0.0 and report.point["mar_pct"] == 0.0
    assert report.events["events"] == 0 and report.events["recall"] == 0.0 and report.events["precision"] == 0.0
    assert report.median_delay_s is None and report.mean_delay_s is None
    assert np.isnan(report.per_series.loc[0, "median_delay_s"])
    assert summary_json(report)["median_delay_s"] is None
    assert "n/a" in format_report(report)


def test_grade_pools_rows_and_keeps_events_apart_per_series():
    # a ends inside an unflagged event, b starts inside a flagged one: pooled as rows, they stay two events.
    a = _series("a", [0, 0, 1, 1], [0, 1, 0, 0])
    b = _series("b", [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0])
    report = grade([a, b])
    # pooled rows: tp 1 (b0), fp 1 (a1), fn 3 (a2, a3, b1), tn 5
    p = report.point
    assert (p["tp"], p["fp"], p["fn"], p["tn"]) == (1, 1, 3, 5)
    assert p["f1"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert p["far_pct"] == pytest.approx(100 / 6) and p["mar_pct"] == pytest.approx(75.0)
    e = report.events
    assert (e["events"], e["detected"], e["alarms"], e["true_alarms"], e["false_alarms"]) == (2, 1, 2, 1, 1)
    assert report.median_delay_s == 0.0 and report.mean_delay_s == 0.0
    table = report.per_series
    assert list(table.columns) == list(SERIES_COLUMNS)
    assert table["name"].tolist() == ["a", "b"]
    assert table["rows"].tolist() == [4, 6] and table["anomalous_rows"].tolist() == [2, 2]
    assert table["detected_events"].tolist() == [0, 1] and table["false_alarms"].tolist() == [1, 0]
    assert table["f1"].tolist() == pytest.approx([0.0, 2 / 3])
    assert np.isnan(table.loc[0, "median_delay_s"]) and table.loc[1, "median_delay_s"] == 0.0


def test_series_result_checks_its_shape():
    with pytest.raises(ValueError, match="bad: .*differ in length"):
        SeriesResult("bad", np.arange(3.0), [0, 1, 0], [0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="bad: test_from 4 outside 0..3"):
        SeriesResult("bad", np.arange(3.0), [0, 1, 0], [0, 1, 0], [0.1, 0.2, 0.3], test_from=4)
    with pytest.raises(ValueError, match="bad: flags must hold only 0 and 1"):
        SeriesResult("bad", np.arange(3.0), [0, 1, 0], [0, 1, 3], [0.1, 0.2, 0.3])


# ---- the always-anomalous baseline ----

def test_always_anomalous_baseline_on_skab_like_proportions():
    # Like SKAB's test rows: about 54 % anomalous (537 of 1000 graded rows); training rows never count.
    rng = np.random.default_rng(0)
    results, anomalous = [], [180, 177, 180]
    for k, (rows, bad) in enumerate(zip([334, 333, 333], anomalous)):
        labels = np.r_[np.zeros(100, int), np.zeros(rows - bad, int), np.ones(bad, int)]
        flags = rng.integers(0, 2, len(labels))
        results.append(SeriesResult(f"s{k}", T0 + np.arange(len(labels)), labels, flags, rng.random(len(labels)),
                                    test_from=100))
    report = grade(results)
    base = report.baseline
    assert report.test_rows == 1000
    assert (base["tp"], base["fp"], base["fn"], base["tn"]) == (537, 463, 0, 0)
    assert base["precision"] == pytest.approx(0.537) and base["recall"] == 1.0
    assert base["f1"] == pytest.approx(2 * 0.537 / 1.537)  # 0.6988
    assert (base["far_pct"], base["mar_pct"]) == (100.0, 0.0)


# ---- text and JSON ----

def _report_with_f1(f1_target: float) -> BenchmarkReport:
    """test_point_metrics_by_hand's rows plus three quiet ones: tp 2, fp 2, fn 2, tn 7, so F1 0.5, FAR 2/9."""
    report = grade([_series("valve1/0", [0, 0, 1, 1, 1, 0, 0, 0, 1, 0], [0, 1, 1, 1, 0, 0, 0, 0, 0, 1]),
                    _series("other/7", [0, 0, 0], [0, 0, 0])])
    assert report.point["f1"] == pytest.approx(f1_target)
    return report


def test_format_report_inserts_this_run_in_the_leaderboard_by_f1():
    report = _report_with_f1(0.5)
    text = format_report(report, list(SKAB_LEADERBOARD), title="SKAB benchmark")
    lines = text.splitlines()
    assert lines[0] == "SKAB benchmark"
    board = lines[next(i for i, line in enumerate(lines) if line.startswith("Leaderboard")) + 3:]
    methods = [name for name, *_ in SKAB_LEADERBOARD]
    order = [next(m for m in [*methods, "this run"] if f" {m} " in f"{line} ") for line in board]
    # 0.5 ranks below Vanilla LSTM (0.54) and above Vanilla AE (0.39): eighth of eleven.
    assert order == [*methods[:7], "this run", *methods[7:]]
    ours = board[7]
    assert ours.lstrip().startswith("*") and " 8 " in ours and "0.5000" in ours and "22.22" in ours
    assert all("*" not in line for line in board if line is not ours)
    assert "Conv-AE" in text and "13.55" in text and "28.02" in text
    for name in ("valve1/0", "other/7"):
        assert any(line.strip().startswith(name) for line in lines)
    assert "always anomalous" in text and "FAR 100.00 %" in text


def test_format_report_ranks_ties_above_us_and_sorts_the_leaderboard():
    report = _report_with_f1(0.5)
    text = format_report(report, [("Low", 0.4, 1.0, 2.0), ("High", 0.9, 3.0, 4.0), ("Tie", 0.5, 5.0, 6.0)])
    board = text[text.index("MAR %", text.index("Leaderboard")):]
    assert board.index("High") < board.index("Tie") < board.index("this run") < board.index("Low")
    assert "Leaderboard" not in format_report(report)


def test_summary_json_keys_and_rounding():
    report = _report_with_f1(0.5)
    summary = summary_json(report)
    assert list(summary) == ["f1", "far_pct", "mar_pct", "runs", "test_rows", "event_precision", "event_recall",
                             "event_f1", "median_delay_s"]
    # far 2 of 9 negatives, mar 2 of 4; events rows 2-4 (found on its first row) and 8 (missed); alarms rows 1-3
    # (on an event) and 9 (false).
    assert summary["f1"] == 0.5 and summary["far_pct"] == 22.22 and summary["mar_pct"] == 50.0
    assert (summary["runs"], summary["test_rows"]) == (2, 13)
    assert summary["event_precision"] == 0.5 and summary["event_recall"] == 0.5
    assert summary["event_f1"] == 0.5
    assert summary["median_delay_s"] == 0.0
    assert all(isinstance(v, (int, float)) and not isinstance(v, np.generic) for v in summary.values())


# ---- plot ----

def _skab_like(n_series: int = 34, rows: int = 1000) -> list[SeriesResult]:
    rng = np.random.default_rng(3)
    results = []
    for k in range(n_series):
        labels = np.zeros(rows, int)
        labels[500 + k: 800 + k] = 1
        scores = rng.random(rows) + labels
        results.append(SeriesResult(f"valve{k % 3}/{k}", T0 + np.arange(rows, dtype=float), labels,
                                    (scores > 1.2).astype(int), scores, test_from=300))
    return results


def test_plot_writes_a_png_quickly(tmp_path):
    results = _skab_like()
    start = time.perf_counter()
    path = plot(results, tmp_path / "out" / "benchmark.png")
    elapsed = time.perf_counter() - start
    assert path == tmp_path / "out" / "benchmark.png"
    width, height = _png_size(path)
    assert width > 1000 and height > 600 and path.stat().st_size > 50_000
    assert elapsed < 10.0, f"plot took {elapsed:.1f} s"
    few = plot(results, tmp_path / "few.png", max_series=4)
    assert _png_size(few)[1] < height


# ---- reading labelled series ----

def test_read_labelled_series_sorts_rows_and_finds_the_label(tmp_path):
    file = tmp_path / "pump.csv"
    pd.DataFrame({
        "timestamp": ["2026-01-01 00:00:02", "2026-01-01 00:00:00", "2026-01-01 00:00:01", "2026-01-01 00:00:00"],
        "flow": [3.0, 1.0, 2.0, 1.5],
        "Pressure": [30.0, 10.0, 20.0, 15.0],
        "Anomaly": [1, 0, 0, 1],
        "changepoint": [1, 0, 0, 0],
    }).to_csv(file, index=False)
    [series] = read_labelled_series(file)
    assert series.name == "pump" and series.sensors == ("flow", "Pressure")
    t0 = pd.Timestamp("2026-01-01", tz="UTC").timestamp()
    np.testing.assert_allclose(series.times, t0 + np.array([0.0, 0.0, 1.0, 2.0]))
    # stable: the two rows at 00:00:00 keep their file order
    np.testing.assert_allclose(series.values, [[1.0, 10.0], [1.5, 15.0], [2.0, 20.0], [3.0, 30.0]])
    assert series.labels.dtype == np.int8 and series.labels.tolist() == [0, 1, 0, 1]
    assert series.values.dtype == np.float64 and series.times.dtype == np.float64


def test_read_labelled_series_label_preference_and_explicit_column(tmp_path):
    file = tmp_path / "x.csv"
    pd.DataFrame({"ts": [0.0, 1.0, 2.0], "v": [1.0, 2.0, 3.0], "target": [0, 0, 0], "label": [0, 1, 0],
                  "fault": [1, 1, 0]}).to_csv(file, index=False)
    [preferred] = read_labelled_series(file)
    assert preferred.labels.tolist() == [0, 1, 0]  # "label" ranks above "target"
    assert preferred.sensors == ("v", "fault")
    [explicit] = read_labelled_series(file, label_column="fault")
    assert explicit.labels.tolist() == [1, 1, 0] and explicit.sensors == ("v",)


@pytest.mark.parametrize(("label", "message"), [
    (None, r"bad\.csv has no label column"),
    ([0, 2, 1], r"bad\.csv: label column 'anomaly' must hold only 0 or 1; data row 1"),
    ([0, 1, None], r"bad\.csv: label column 'anomaly' must hold only 0 or 1; data row 2 .*nan"),
])
def test_read_labelled_series_errors_name_the_file(tmp_path, label, message):
    frame = pd.DataFrame({"ts": [0.0, 1.0, 2.0], "v": [1.0, 2.0, 3.0]})
    if label is not None:
        frame["anomaly"] = label
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=message):
        read_labelled_series(tmp_path / "bad.csv")


def test_read_labelled_series_folder_skips_unlabelled_files(tmp_path, caplog):
    (tmp_path / "valve1").mkdir()
    pd.DataFrame({"ts": [1.0, 0.0], "v": [2.0, 1.0], "anomaly": [1, 0]}).to_csv(tmp_path / "valve1" / "0.csv",
                                                                                index=False)
    pd.DataFrame({"ts": [0.0], "v": [1.0]}).to_csv(tmp_path / "free.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        series = read_labelled_series(tmp_path)
    assert [s.name for s in series] == ["valve1/0"] and series[0].labels.tolist() == [0, 1]
    assert any("free.csv" in r.getMessage() and "no label column" in r.getMessage() for r in caplog.records)
    (tmp_path / "valve1" / "0.csv").unlink()
    with pytest.raises(ValueError, match="no labelled series under"):
        read_labelled_series(tmp_path)
    bad = tmp_path / "valve1" / "1.csv"
    pd.DataFrame({"ts": [0.0], "v": [1.0], "anomaly": [0.5]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"1\.csv: label column"):
        read_labelled_series(tmp_path)


@pytest.mark.skipif(not SKAB.is_dir(), reason=f"needs SKAB at {SKAB}")
def test_read_labelled_series_on_skab_and_grade_the_baseline(caplog):
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        series = read_labelled_series(SKAB)
    assert len(series) == 34
    names = [s.name for s in series]
    assert names == sorted(names) and "valve1/0" in names and "other/1" in names
    assert not any(name.startswith("anomaly-free") for name in names)
    assert any("anomaly-free.csv" in r.getMessage() for r in caplog.records)
    for s in series:
        assert s.values.shape == (len(s.times), 8) and len(s.sensors) == 8 and "changepoint" not in s.sensors
        assert np.all(np.diff(s.times) >= 0) and set(np.unique(s.labels)) == {0, 1}
    results = [SeriesResult(s.name, s.times, s.labels, np.zeros_like(s.labels), np.zeros(len(s.times)),
                            test_from=400) for s in series]
    report = grade(results)
    share = sum(int(s.labels[400:].sum()) for s in series) / report.test_rows
    assert 0.4 < share < 0.7
    assert report.baseline["f1"] == pytest.approx(2 * share / (1 + share))
    assert report.point["f1"] == 0.0 and report.point["mar_pct"] == 100.0 and report.events["events"] == 34
