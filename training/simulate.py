"""Deterministic fleet simulator: correlated pump and motor sensors with labelled faults.

Each device has its own operating point. A load signal (daily cycle plus a slow wander) sets the shaft speed; speed
drives flow (linear), pressure (square) and current (cube, the affinity laws); temperatures follow speed and current
with a thermal lag; vibration grows with speed. Sensors drift slowly and carry gaussian noise. Faults are injected
after the first 10 % of each device's timeline and never overlap within a device.
"""
from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from features.schema import encode_events
from features.tables import read_table, table_format

SENSORS: tuple[str, ...] = (
    "flow_rate", "pressure", "motor_current", "vibration_rms", "bearing_temp", "motor_temp", "voltage", "rpm",
)
FAULT_TYPES: tuple[str, ...] = ("bearing_wear", "cavitation", "stuck_sensor", "spikes")
NORMAL = "none"
COLUMNS: tuple[str, ...] = ("event_id", "device_id", "ts", *SENSORS, "label", "fault_type")
TEXT_COLUMNS: tuple[str, ...] = ("event_id", "device_id", "fault_type")

DAY_S = 86400.0
WARMUP_FRACTION = 0.1
FAULT_STEPS = (60, 600)  # fault length in samples: 60-600 s at a 1 s interval
FAULT_GAP_STEPS = 30  # minimum normal samples between two faults of a device
MOTOR_EVERY = 4  # every 4th device of a fleet is a motor
_SENSOR_INDEX = {name: i for i, name in enumerate(SENSORS)}
_REL_NOISE = np.array([0.01, 0.01, 0.012, 0.04, 0.0, 0.0, 0.004, 0.003])  # relative noise per sensor
_TEMP_NOISE_C = 0.25
_TEMP_LAG_S = (900.0, 1500.0)  # motor winding, bearing


def _device_ids(n_devices: int) -> list[str]:
    return [f"{'motor' if i % MOTOR_EVERY == MOTOR_EVERY - 1 else 'pump'}-{i:03d}" for i in range(n_devices)]


def _device_number(device_id: str) -> int:
    match = re.search(r"(\d+)$", device_id)
    return int(match.group(1)) if match else zlib.crc32(device_id.encode())


def device_table(device_ids: Iterable[str]) -> pd.DataFrame:
    """Device metadata derived from the ids: kind (id prefix, "motor" or else "pump"), site and line, and the
    maintenance record a plant's asset register holds (machine type, install and last service dates, rated limits),
    what ``iotml features push`` loads into the feature store."""
    ids = list(dict.fromkeys(device_ids))
    numbers = [_device_number(d) for d in ids]
    return pd.DataFrame({
        "device_id": ids,
        "kind": ["motor" if d.startswith("motor") else "pump" for d in ids],
        "site": [f"site-{n // 8 % 3 + 1}" for n in numbers],
        "line": [f"line-{n // 4 % 2 + 1}" for n in numbers],
        "machine_type": ["LMH"[n % 3] for n in numbers],
        "install_date": [f"{2015 + n % 9}-{n % 12 + 1:02d}-15" for n in numbers],
        "last_service": [f"2025-{n % 12 + 1:02d}-{n % 27 + 1:02d}" for n in numbers],
        "rated_power_kw": [(5.5, 7.5, 11.0)[n % 3] for n in numbers],
        "rated_max_temp_c": [(80.0, 90.0, 105.0)[n % 3] for n in numbers],
    })


def _operating_point(kind: str, rng: np.random.Generator) -> dict[str, float]:
    """A device's nominal readings at full load and its load-profile and temperature parameters."""
    if kind == "motor":
        point = {"rpm": rng.uniform(900, 1800), "flow_rate": rng.uniform(10, 30), "pressure": rng.uniform(0.5, 1.5),
                 "motor_current": rng.uniform(40, 90), "vibration_rms": rng.uniform(1.0, 2.0)}
    else:
        point = {"rpm": rng.uniform(1450, 2950), "flow_rate": rng.uniform(60, 140), "pressure": rng.uniform(3, 6),
                 "motor_current": rng.uniform(20, 45), "vibration_rms": rng.uniform(1.5, 3.0)}
    point.update(
        voltage=400.0 * rng.uniform(0.98, 1.02), ambient=rng.uniform(15, 25), bearing_rise=rng.uniform(20, 30),
        motor_rise=rng.uniform(35, 50), load_mean=rng.uniform(0.75, 0.88), load_daily=rng.uniform(0.08, 0.14),
        peak_hour=rng.uniform(12, 16),
    )
    return point


def _load_profile(point: dict[str, float], rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """A load function of epoch seconds: daily sinusoid plus a wander of three slow sinusoids."""
    periods = rng.uniform(1800, 4 * 3600, 3)
    amplitudes = rng.uniform(0.005, 0.015, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    peak_s = point["peak_hour"] * 3600.0

    def load(ts: np.ndarray) -> np.ndarray:
        daily = point["load_daily"] * np.cos(2 * np.pi * (ts - peak_s) / DAY_S)
        wander = (amplitudes * np.sin(2 * np.pi * ts[:, None] / periods + phases)).sum(axis=1)
        return point["load_mean"] + daily + wander

    return load


def _normal_signals(point: dict[str, float], ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fault-free readings, shape (n, len(SENSORS))."""
    n = len(ts)
    load = _load_profile(point, rng)
    speed = load(ts) * (1 + 0.003 * rng.standard_normal(n))
    daily_phase = 2 * np.pi * (ts - point["peak_hour"] * 3600.0) / DAY_S
    voltage = point["voltage"] * (1 - 0.01 * np.cos(daily_phase))
    ambient = point["ambient"] + 4.0 * np.cos(daily_phase - 0.5)
    motor_lag = load(ts - _TEMP_LAG_S[0])
    bearing_lag = load(ts - _TEMP_LAG_S[1])
    values = np.empty((n, len(SENSORS)))
    values[:, 0] = point["flow_rate"] * speed
    values[:, 1] = point["pressure"] * speed**2
    values[:, 2] = point["motor_current"] * (0.3 + 0.7 * speed**3) * point["voltage"] / voltage
    values[:, 3] = point["vibration_rms"] * (0.6 + 0.4 * speed**2)
    values[:, 4] = ambient + point["bearing_rise"] * (0.5 + 0.5 * bearing_lag**2)
    values[:, 5] = ambient + point["motor_rise"] * (0.4 + 0.6 * motor_lag**3)
    values[:, 6] = voltage
    values[:, 7] = point["rpm"] * speed
    drift = rng.normal(0.0, 0.01, len(SENSORS)) * (ts - ts[0])[:, None] / DAY_S
    noise = rng.standard_normal(values.shape)
    values *= 1 + drift + _REL_NOISE * noise
    values[:, 4:6] += _TEMP_NOISE_C * noise[:, 4:6]
    return values


def _noise_scale(point: dict[str, float]) -> np.ndarray:
    """Typical absolute noise of each sensor at full load."""
    levels = np.array([point[s] if s in point else 0.0 for s in SENSORS])
    scale = _REL_NOISE * levels
    scale[4:6] = _TEMP_NOISE_C
    return scale


def _schedule_faults(n: int, fault_rate: float, duration_s: float,
                     rng: np.random.Generator) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, stop, fault type) sample ranges after the warm-up, placed uniformly at random."""
    warmup = max(1, math.ceil(WARMUP_FRACTION * n))
    count = rng.poisson(fault_rate * duration_s / 3600.0) if fault_rate > 0 else 0
    lengths = rng.integers(FAULT_STEPS[0], FAULT_STEPS[1] + 1, count)
    kinds = rng.choice(len(FAULT_TYPES), count)
    available = n - warmup
    needed = np.cumsum(lengths + FAULT_GAP_STEPS)
    keep = int(np.searchsorted(needed, available, side="right"))
    lengths, kinds = lengths[:keep], kinds[:keep]
    if keep == 0:
        return []
    slack = available - int(needed[keep - 1])
    offsets = np.sort(rng.integers(0, slack + 1, keep))
    starts = warmup + offsets + np.concatenate(([0], np.cumsum(lengths + FAULT_GAP_STEPS)[:-1]))
    return [(int(s), int(s + length), FAULT_TYPES[k]) for s, length, k in zip(starts, lengths, kinds)]


def _inject_fault(values: np.ndarray, start: int, stop: int, fault_type: str, scale: np.ndarray,
                  rng: np.random.Generator) -> None:
    """Apply one fault to rows start:stop of the readings, in place."""
    span = values[start:stop]
    length = stop - start
    severity = rng.uniform(0.6, 1.0)
    if fault_type == "bearing_wear":
        ramp = severity * np.clip(0.15 + np.arange(length) / (0.6 * length), 0.0, 1.0)
        span[:, _SENSOR_INDEX["vibration_rms"]] *= 1 + 0.6 * ramp
        span[:, _SENSOR_INDEX["bearing_temp"]] += 8.0 * ramp
        span[:, _SENSOR_INDEX["motor_current"]] *= 1 + 0.06 * ramp
    elif fault_type == "cavitation":
        span[:, _SENSOR_INDEX["pressure"]] *= 1 - severity * (0.08 + 0.02 * rng.standard_normal(length))
        span[:, _SENSOR_INDEX["flow_rate"]] *= 1 - 0.05 * severity
        span[:, _SENSOR_INDEX["vibration_rms"]] *= 1 + severity * np.abs(0.1 + 0.25 * rng.standard_normal(length))
    elif fault_type == "stuck_sensor":
        sensor = rng.integers(len(SENSORS))
        span[:, sensor] = values[start - 1, sensor]
    elif fault_type == "spikes":
        sensor = rng.integers(len(SENSORS))
        count = int(np.clip(length // 20, 3, 30))
        rows = rng.choice(length, count, replace=False)
        span[rows, sensor] += rng.choice([-1.0, 1.0], count) * rng.uniform(8, 15, count) * scale[sensor]
    else:
        raise ValueError(f"unknown fault type {fault_type!r}")


def _simulate_device(kind: str, ts: np.ndarray, duration_s: float, fault_rate: float, point_rng: np.random.Generator,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Readings (n, n_sensors) and fault-type codes (n,; -1 when normal) of one device."""
    point = _operating_point(kind, point_rng)
    values = _normal_signals(point, ts, rng)
    codes = np.full(len(ts), -1, dtype=np.int8)
    scale = _noise_scale(point)
    for start, stop, fault_type in _schedule_faults(len(ts), fault_rate, duration_s, rng):
        _inject_fault(values, start, stop, fault_type, scale, rng)
        codes[start:stop] = FAULT_TYPES.index(fault_type)
    return values, codes


def simulate_fleet(n_devices: int, duration_s: float, interval_s: float = 1.0, seed: int = 0,
                   start: float = 1767225600.0, fault_rate: float = 1.0) -> pd.DataFrame:
    """A labelled sensor frame for a fleet, one row per device and sample, sorted by ts then device_id.

    ``fault_rate`` is the expected number of faults per device per simulated hour (0: normal data only); each fault
    lasts 60-600 samples. On a given timeline device i depends on seed and i only (not n_devices); faults go on the
    same normal signal that ``fault_rate=0`` gives, so label-0 rows equal the fault-free run. A device keeps its
    operating point across timelines of the same seed (train on one hour, stream the next), with fresh noise.
    """
    if n_devices < 1 or duration_s <= 0 or interval_s <= 0 or fault_rate < 0:
        raise ValueError("n_devices >= 1, duration_s > 0, interval_s > 0 and fault_rate >= 0 are required")
    steps = np.arange(int(math.ceil(duration_s / interval_s)))
    ts = start + steps * interval_s
    ids = _device_ids(n_devices)
    values = np.empty((n_devices, len(ts), len(SENSORS)))
    codes = np.empty((n_devices, len(ts)), dtype=np.int8)
    for i, device_id in enumerate(ids):
        point_rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        rng = np.random.default_rng(np.random.SeedSequence([seed, i, int(start)]))
        values[i], codes[i] = _simulate_device(device_id.split("-")[0], ts, duration_s, fault_rate, point_rng, rng)
    order = np.argsort(ids, kind="stable")
    sorted_ids = np.asarray(ids, dtype=object)[order]
    values, codes = values[order].transpose(1, 0, 2), codes[order].T
    rows = len(ts) * n_devices
    frame = pd.DataFrame({
        "event_id": [f"{d}-{k}" for k in np.rint(ts * 1000).astype(np.int64).tolist() for d in sorted_ids],
        "device_id": np.tile(sorted_ids, len(ts)),
        "ts": np.repeat(ts, n_devices),
    })
    frame[list(SENSORS)] = values.reshape(rows, len(SENSORS))
    flat_codes = codes.reshape(rows)
    frame["label"] = (flat_codes >= 0).astype(np.int64)
    frame["fault_type"] = np.asarray((*FAULT_TYPES, NORMAL), dtype=object)[flat_codes]
    return frame


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as Parquet when the path names Parquet (.parquet, .pq), else as CSV; returns the path."""
    path = Path(path)
    kind = table_format(path)
    if kind == "jsonl":
        raise ValueError(f"{path}: fleet tables are written as CSV or Parquet, not JSON lines")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def read_frame(path: str | Path) -> pd.DataFrame:
    """Read a frame written by ``write_frame`` (its id and fault-type columns as strings)."""
    return read_table(path, text_columns=TEXT_COLUMNS)


def iter_payloads(frame: pd.DataFrame, sensors: Sequence[str] = SENSORS) -> Iterator[str]:
    """One JSON event payload per row, in row order (with the event_id when the frame has one)."""
    event_ids = frame["event_id"].astype(str).tolist() if "event_id" in frame else None
    yield from encode_events(frame["device_id"].astype(str).tolist(), frame["ts"].to_numpy(dtype=np.float64),
                             frame[list(sensors)].to_numpy(dtype=np.float64), sensors, event_ids)
