"""Behaviour of the fleet simulator: determinism, labels, fault placement, physics and the wire format."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from features.schema import EventRules, RawEvent, event_payload, parse_events
from inference_pipeline.evaluation.accuracy import fault_intervals_from_truth
from training.simulate import (
    FAULT_TYPES,
    SENSORS,
    device_table,
    iter_payloads,
    read_frame,
    simulate_fleet,
    write_frame,
)

START = 1767225600.0
COLUMNS = ["event_id", "device_id", "ts", *SENSORS, "label", "fault_type"]


@pytest.fixture(scope="module")
def long_fleet() -> pd.DataFrame:
    return simulate_fleet(n_devices=12, duration_s=4 * 3600, seed=7, fault_rate=2.0)


def test_same_seed_gives_identical_frame_and_other_seed_differs():
    first = simulate_fleet(3, 600, seed=11)
    pd.testing.assert_frame_equal(first, simulate_fleet(3, 600, seed=11))
    other = simulate_fleet(3, 600, seed=12)
    assert not np.allclose(first[list(SENSORS)].to_numpy(), other[list(SENSORS)].to_numpy())


def test_frame_has_the_documented_columns_and_types():
    frame = simulate_fleet(5, 120, interval_s=2.0)
    assert list(frame.columns) == COLUMNS
    assert len(frame) == 5 * 60
    assert frame["label"].dtype == np.int64
    assert all(frame[s].dtype == np.float64 for s in [*SENSORS, "ts"])
    assert frame["event_id"].is_unique
    assert frame.index.equals(pd.RangeIndex(len(frame)))
    assert np.isfinite(frame[list(SENSORS)].to_numpy()).all()
    assert set(frame["device_id"]) == {"pump-000", "pump-001", "pump-002", "motor-003", "pump-004"}
    assert frame.loc[frame["device_id"] == "pump-001", "event_id"].iloc[3] == f"pump-001-{round((START + 6) * 1000)}"
    assert np.allclose(np.diff(np.unique(frame["ts"])), 2.0)
    assert frame["ts"].min() == START


def test_rows_are_sorted_by_time_then_device():
    frame = simulate_fleet(6, 300)
    resorted = frame.sort_values(["ts", "device_id"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, resorted)


def test_label_is_one_exactly_while_a_fault_is_active(long_fleet):
    assert set(long_fleet["label"].unique()) == {0, 1}
    assert ((long_fleet["label"] == 1) == (long_fleet["fault_type"] != "none")).all()
    assert set(long_fleet["fault_type"].unique()) <= {"none", *FAULT_TYPES}


def test_every_fault_type_appears_in_a_long_fleet(long_fleet):
    assert set(fault_intervals_from_truth(long_fleet)["fault_type"]) == set(FAULT_TYPES)


def test_zero_fault_rate_gives_normal_data_only():
    frame = simulate_fleet(8, 3 * 3600, seed=3, fault_rate=0.0)
    assert (frame["label"] == 0).all()
    assert (frame["fault_type"] == "none").all()
    assert fault_intervals_from_truth(frame).empty


def test_faults_are_injected_on_the_same_normal_signal():
    clean = simulate_fleet(4, 3600, seed=5, fault_rate=0.0)
    faulty = simulate_fleet(4, 3600, seed=5, fault_rate=3.0)
    normal = faulty["label"] == 0
    assert normal.mean() < 0.95
    pd.testing.assert_frame_equal(faulty[normal], clean[normal])


def test_warm_up_is_fault_free_even_at_a_high_fault_rate():
    duration = 2 * 3600
    frame = simulate_fleet(10, duration, seed=2, fault_rate=20.0)
    warm_up = frame["ts"] < START + 0.1 * duration
    assert (frame.loc[warm_up, "label"] == 0).all()
    assert frame.loc[~warm_up, "label"].mean() > 0.3


@pytest.mark.parametrize("fault_rate", [2.0, 30.0])
def test_faults_of_a_device_do_not_overlap_and_last_one_to_ten_minutes(fault_rate):
    intervals = fault_intervals_from_truth(simulate_fleet(6, 2 * 3600, seed=8, fault_rate=fault_rate))
    assert len(intervals) > 6
    lengths = intervals["end_ts"] - intervals["start_ts"] + 1.0
    assert lengths.between(60, 600).all()
    for _, device in intervals.groupby("device_id"):
        device = device.sort_values("start_ts")
        assert (device["start_ts"].to_numpy()[1:] > device["end_ts"].to_numpy()[:-1] + 1.0).all()


def test_fault_intervals_cover_exactly_the_labelled_rows(long_fleet):
    intervals = fault_intervals_from_truth(long_fleet)
    covered = pd.Series(False, index=long_fleet.index)
    for row in intervals.itertuples():
        inside = (long_fleet["device_id"] == row.device_id) & long_fleet["ts"].between(row.start_ts, row.end_ts)
        assert (long_fleet.loc[inside, "fault_type"] == row.fault_type).all()
        covered |= inside
    assert (covered == (long_fleet["label"] == 1)).all()


def _baseline_and_fault(frame: pd.DataFrame, fault_type: str, sensor: str) -> tuple[np.ndarray, np.ndarray]:
    """Per fault of this type: mean of the sensor over normal rows in the 5 min before the fault and during its
    second half."""
    before, during = [], []
    for row in fault_intervals_from_truth(frame).query("fault_type == @fault_type").itertuples():
        rows = frame[frame["device_id"] == row.device_id].set_index("ts")
        device = rows[sensor]
        middle = (row.start_ts + row.end_ts) / 2
        normal_before = rows.loc[row.start_ts - 300 : row.start_ts - 1].query("label == 0")[sensor]
        before.append(normal_before.mean())
        during.append(device.loc[middle : row.end_ts].mean())
    return np.array(before), np.array(during)


def test_bearing_wear_raises_vibration_and_bearing_temperature(long_fleet):
    for sensor in ("vibration_rms", "bearing_temp"):
        before, during = _baseline_and_fault(long_fleet, "bearing_wear", sensor)
        assert len(before) > 0
        assert (during > before).all()


def test_cavitation_drops_pressure_relative_to_speed(long_fleet):
    ratio = long_fleet["pressure"] / long_fleet["rpm"] ** 2
    frame = long_fleet.assign(pressure_per_speed=ratio)
    before, during = _baseline_and_fault(frame, "cavitation", "pressure_per_speed")
    assert len(before) > 0
    assert (during < 0.97 * before).all()


def test_stuck_sensor_freezes_one_reading_for_the_whole_fault(long_fleet):
    intervals = fault_intervals_from_truth(long_fleet).query("fault_type == 'stuck_sensor'")
    assert len(intervals) > 0
    for row in intervals.itertuples():
        device = long_fleet[long_fleet["device_id"] == row.device_id]
        span = device[device["ts"].between(row.start_ts - 1, row.end_ts)][list(SENSORS)]
        frozen = (span.nunique() == 1).to_numpy()
        assert frozen.sum() == 1


def test_spikes_are_few_and_far_outside_the_noise(long_fleet):
    intervals = fault_intervals_from_truth(long_fleet).query("fault_type == 'spikes'")
    assert len(intervals) > 0
    for row in intervals.itertuples():
        device = long_fleet[long_fleet["device_id"] == row.device_id]
        steps = device[list(SENSORS)].diff().abs()
        noise = steps[device["label"] == 0].median()
        inside = device["ts"].between(row.start_ts, row.end_ts)
        jumps = (steps[inside] > 8 * noise).sum()
        assert jumps.max() >= 3
        assert jumps.max() <= 2 * inside.sum() // 10


def test_sensors_follow_the_operating_physics():
    frame = simulate_fleet(1, 86400, interval_s=10.0, seed=4, fault_rate=0.0)
    corr = frame[list(SENSORS)].corr()
    assert corr.loc["rpm", "flow_rate"] > 0.95
    assert corr.loc["rpm", "pressure"] > 0.95
    assert corr.loc["rpm", "motor_current"] > 0.9
    assert corr.loc["motor_current", "motor_temp"] > 0.5
    hourly_rpm = frame.groupby(((frame["ts"] - START) // 3600).astype(int))["rpm"].mean()
    assert hourly_rpm.max() > 1.1 * hourly_rpm.min()


def test_device_table_is_derived_from_the_ids():
    ids = ["pump-000", "motor-003", "pump-009", "pump-000"]
    table = device_table(ids)
    assert list(table.columns) == ["device_id", "kind", "site", "line", "machine_type", "install_date",
                                   "last_service", "rated_power_kw", "rated_max_temp_c"]
    assert table["device_id"].tolist() == ["pump-000", "motor-003", "pump-009"]
    assert table["kind"].tolist() == ["pump", "motor", "pump"]
    pd.testing.assert_frame_equal(table, device_table(ids))
    assert table.loc[0, "site"] != table.loc[2, "site"]


@pytest.mark.parametrize("name", ["fleet.parquet", "nested/fleet.csv"])
def test_frames_round_trip_through_parquet_and_csv(tmp_path, name):
    frame = simulate_fleet(3, 200, seed=9, fault_rate=30.0)
    path = write_frame(frame, tmp_path / name)
    assert path.exists()
    pd.testing.assert_frame_equal(read_frame(path), frame, check_dtype=False)
    restored = read_frame(path)
    assert restored["label"].dtype.kind == "i"
    assert np.array_equal(restored[list(SENSORS)].to_numpy(), frame[list(SENSORS)].to_numpy())


def test_payloads_parse_into_one_event_per_row_and_one_batch_per_device():
    frame = simulate_fleet(5, 300, seed=1)
    payloads = list(iter_payloads(frame, SENSORS))
    assert len(payloads) == len(frame)
    raws = [RawEvent(payload, received_at=0.0) for payload in payloads]
    batches, dead = parse_events(raws, EventRules(SENSORS), now=frame["ts"].max())
    assert dead == []
    assert sum(len(batch) for batch in batches) == len(frame)
    assert {batch.device_id for batch in batches} == set(frame["device_id"])
    for batch in batches:
        device = frame[frame["device_id"] == batch.device_id]
        assert batch.event_ids.tolist() == device["event_id"].tolist()
        assert np.array_equal(batch.ts, device["ts"].to_numpy())
        assert np.array_equal(batch.values, device[list(SENSORS)].to_numpy())


def test_payloads_match_the_schema_wire_format_in_row_order():
    frame = simulate_fleet(2, 5, seed=1)
    payloads = list(iter_payloads(frame, SENSORS[:3]))
    row = frame.iloc[3]
    expected = event_payload(row["device_id"], row["ts"], {s: row[s] for s in SENSORS[:3]}, row["event_id"])
    assert payloads[3] == expected
    assert [json.loads(p)["event_id"] for p in payloads] == frame["event_id"].tolist()
