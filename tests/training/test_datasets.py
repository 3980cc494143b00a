"""Loaders read the shared public data sets and arbitrary time-series files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.tables import timestamps_to_epoch
from training.datasets import (
    SKAB_SENSORS,
    load_ai4i,
    load_skab,
    read_time_series,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SKAB = DATA / "skab"
AI4I = DATA / "ai4i2020" / "ai4i2020.csv"

needs_data = pytest.mark.skipif(not SKAB.is_dir() or not AI4I.is_file(), reason=f"shared data not found under {DATA}")


@pytest.fixture(scope="module")
def skab_runs():
    return load_skab(SKAB)


@needs_data
def test_skab_folder_gives_34_labelled_runs_and_the_anomaly_free_run(skab_runs):
    names = [run.name for run in skab_runs]
    assert names == sorted(names)
    assert len(names) == 35
    assert "anomaly-free/anomaly-free" in names
    assert "valve1/0" in names and "valve2/3" in names and "other/14" in names
    labelled = [run for run in skab_runs if run.name != "anomaly-free/anomaly-free"]
    assert len(labelled) == 34
    assert sum(len(run.frame) for run in labelled) == 37401
    assert all(run.frame["label"].max() == 1 for run in labelled)


@needs_data
def test_skab_frames_have_epoch_time_sensors_and_integer_labels(skab_runs):
    for run in skab_runs:
        assert list(run.frame.columns) == ["ts", *SKAB_SENSORS, "label"]
        assert run.frame["label"].dtype == np.int64
        assert set(run.frame["label"].unique()) <= {0, 1}
        assert not run.frame.isna().any().any()
    first = next(run for run in skab_runs if run.name == "valve1/0").frame
    assert first["ts"].iloc[0] == pd.Timestamp("2020-03-09 10:14:33", tz="UTC").timestamp()
    assert first["Accelerometer1RMS"].iloc[0] == pytest.approx(0.0265878)


@needs_data
def test_anomaly_free_run_is_all_normal(skab_runs):
    free = next(run for run in skab_runs if run.name == "anomaly-free/anomaly-free").frame
    assert len(free) == 9405
    assert (free["label"] == 0).all()


@needs_data
def test_single_skab_file_loads_as_one_named_run():
    runs = load_skab(SKAB / "valve2" / "1.csv")
    assert [run.name for run in runs] == ["valve2/1"]
    assert runs[0].frame["label"].sum() > 0


def test_skab_loader_rejects_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_skab(tmp_path / "nowhere")


@needs_data
@pytest.mark.parametrize("path", [AI4I, AI4I.parent])
def test_ai4i_has_10000_rows_and_339_failures_in_snake_case(path):
    frame = load_ai4i(path)
    assert len(frame) == 10000
    assert frame["machine_failure"].sum() == 339
    assert frame.columns[0] == "udi"
    for column in ("air_temperature_k", "process_temperature_k", "rotational_speed_rpm", "torque_nm",
                   "tool_wear_min", "twf", "hdf", "pwf", "osf", "rnf", "type", "product_id"):
        assert column in frame.columns
    assert frame[["twf", "hdf", "pwf", "osf", "rnf"]].sum().tolist() == [46, 115, 95, 98, 19]


@needs_data
def test_read_time_series_detects_semicolons_datetime_and_skips_label_columns():
    frame, timestamp, values = read_time_series(SKAB / "valve1" / "0.csv")
    assert timestamp == "datetime"
    assert values == list(SKAB_SENSORS)
    assert "anomaly" in frame.columns and "changepoint" in frame.columns
    assert frame["datetime"].iloc[0] == "2020-03-09 10:14:33"
    epoch = timestamps_to_epoch(frame[timestamp])
    assert epoch[0] == pd.Timestamp("2020-03-09 10:14:33", tz="UTC").timestamp()


def test_read_time_series_finds_an_unnamed_datetime_column_and_keeps_row_order(tmp_path):
    path = tmp_path / "readings.tsv"
    path.write_text("sensor\twhen_recorded\ttemp\tlabel\nA\t2026-01-01T00:00:02Z\t1.5\t0\n"
                    "A\t2026-01-01T00:00:01Z\t2.5\t1\n")
    frame, timestamp, values = read_time_series(path)
    assert timestamp == "when_recorded"
    assert values == ["temp"]
    assert frame["temp"].tolist() == [1.5, 2.5]
    assert np.array_equal(timestamps_to_epoch(frame[timestamp]), np.array([1767225602.0, 1767225601.0]))


def test_read_time_series_uses_row_index_when_nothing_is_a_timestamp(tmp_path):
    path = tmp_path / "values.csv"
    path.write_text("a|b|name\n1|2.5|x\n3|4.5|y\n5|6.5|z\n")
    frame, timestamp, values = read_time_series(path)
    assert timestamp == "row_index"
    assert frame[timestamp].tolist() == [0.0, 1.0, 2.0]
    assert values == ["a", "b"]
    assert frame.columns[:3].tolist() == ["a", "b", "name"]


def test_read_time_series_reads_parquet_with_given_columns(tmp_path):
    path = tmp_path / "series.parquet"
    pd.DataFrame({"t": [10.0, 11.0], "x": [1.0, 2.0], "y": [3, 4]}).to_parquet(path)
    frame, timestamp, values = read_time_series(path, timestamp_column="t", value_columns=["y"])
    assert (timestamp, values) == ("t", ["y"])
    assert frame["y"].tolist() == [3, 4]


def test_read_time_series_errors_name_the_offending_column(tmp_path):
    path = tmp_path / "series.csv"
    path.write_text("ts,flow,state\n1,2.0,on\n2,3.0,off\n")
    with pytest.raises(ValueError, match="'stamp'"):
        read_time_series(path, timestamp_column="stamp")
    with pytest.raises(ValueError, match="'pressure'"):
        read_time_series(path, value_columns=["flow", "pressure"])
    with pytest.raises(ValueError, match="'state'.*not numeric"):
        read_time_series(path, value_columns=["state"])
    with pytest.raises(ValueError, match="'state'"):
        read_time_series(path, timestamp_column="state")


def test_timestamps_to_epoch_treats_naive_strings_as_utc_and_numbers_as_is():
    naive = pd.Series(["2026-01-01 00:00:00", "2026-01-01 01:00:00"], name="t")
    assert timestamps_to_epoch(naive).tolist() == [1767225600.0, 1767229200.0]
    offset = pd.Series(["2026-01-01T02:00:00+02:00"], name="t")
    assert timestamps_to_epoch(offset).tolist() == [1767225600.0]
    assert timestamps_to_epoch(pd.Series([5, 6], name="t")).dtype == np.float64
    assert timestamps_to_epoch(pd.Series([1.5, 2.5])).tolist() == [1.5, 2.5]
