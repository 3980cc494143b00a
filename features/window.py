"""Rolling-window features over one device's recent readings: a pure numpy function shared by batch and stream.

Row i's features depend only on rows max(0, i - W + 1) .. i, always computed over the same W-slot window (missing
history is NaN and ignored), so a row gets bit-identical features whether it is computed in a whole-series batch job
or in a streaming step that carries the last W - 1 rows as state.

``advance`` is the whole per-device rule both paths apply, in event-time order: a missing reading (NaN) takes the
last value seen of its sensor on that device (the version's fill value before any), and a gap longer than
``max_gap_s`` between two events restarts the window (the device warms up again) instead of joining readings
minutes apart.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

STATS: tuple[str, ...] = ("last", "mean", "std", "min", "max", "slope")
LAG = "lag"  # ``lag<k>``: the reading k steps back in the window (lag0 is the event's own), for sequence models


def lag_names(lags: int) -> tuple[str, ...]:
    """The summaries holding the newest ``lags`` readings: ``lag0`` (the event's own) .. ``lag<lags-1>``."""
    return tuple(f"{LAG}{k}" for k in range(lags))


def feature_names(sensors: tuple[str, ...] | list[str], stats: tuple[str, ...] = STATS) -> list[str]:
    """Feature column names, sensor-major: ``<sensor>__<stat>``."""
    return [f"{sensor}__{stat}" for sensor in sensors for stat in stats]


def pad_history(history: np.ndarray, window: int, n_sensors: int) -> np.ndarray:
    """The last ``window - 1`` rows of history, NaN-padded at the front to exactly ``window - 1`` rows."""
    keep = history[-(window - 1):] if window > 1 else history[:0]
    pad = np.full((window - 1 - len(keep), n_sensors), np.nan)
    return np.concatenate([pad, keep.reshape(-1, n_sensors)])


def window_features(history: np.ndarray, rows: np.ndarray, window: int, stats: tuple[str, ...] = STATS) -> np.ndarray:
    """Features for each of ``rows`` (n, S) given the device's earlier readings ``history`` (h, S), h may be 0.

    Returns (n, S * len(stats)) float32 in ``feature_names`` order. A ``lag<k>`` stat is the reading k steps back;
    before the window holds it (warming up), the window's mean stands in.
    """
    n, n_sensors = rows.shape
    series = np.concatenate([pad_history(history, window, n_sensors), rows.astype(np.float64)])
    windows = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)  # (n, S, W)
    present = ~np.isnan(windows)
    count = present.sum(axis=2)
    filled = np.where(present, windows, 0.0)
    mean = filled.sum(axis=2) / count
    centred = np.where(present, windows - mean[..., None], 0.0)
    out = {
        "last": rows.astype(np.float64),
        "mean": mean,
        "std": np.sqrt((centred * centred).sum(axis=2) / count),
        "min": np.where(present, windows, np.inf).min(axis=2),
        "max": np.where(present, windows, -np.inf).max(axis=2),
    }
    if "slope" in stats:
        t = np.arange(window, dtype=np.float64)
        t_mean = np.where(present, t, 0.0).sum(axis=2) / count
        t_centred = np.where(present, t - t_mean[..., None], 0.0)
        t_var = (t_centred * t_centred).sum(axis=2)
        out["slope"] = np.divide((t_centred * centred).sum(axis=2), t_var, out=np.zeros_like(t_var), where=t_var > 0)
    for stat in stats:
        if stat.startswith(LAG):
            back = windows[..., window - 1 - int(stat[len(LAG):])]
            out[stat] = np.where(np.isnan(back), mean, back)
    return np.stack([out[stat] for stat in stats], axis=2).reshape(n, n_sensors * len(stats)).astype(np.float32)


def window_fill(history_len: int, n: int, window: int) -> np.ndarray:
    """How many readings each of the next ``n`` rows' windows holds after ``history_len`` earlier readings."""
    return np.minimum(window, history_len + np.arange(1, n + 1))


def series_features(values: np.ndarray, window: int, stats: tuple[str, ...] = STATS) -> np.ndarray:
    """Features for a whole device series from its first reading (the batch path)."""
    return window_features(values[:0], values, window, stats)


@dataclasses.dataclass
class WindowState:
    """What a device carries between batches: its newest W - 1 readings (missing ones imputed) and newest event time."""

    tail: np.ndarray  # (<= W - 1, S) float64
    newest: float = float("-inf")

    @classmethod
    def empty(cls, n_sensors: int) -> "WindowState":
        return cls(np.empty((0, n_sensors)))


@dataclasses.dataclass
class Featurised:
    """Features of one batch of a device's events, the readings imputed in it and the device's state after it."""

    features: np.ndarray  # (n, S * len(stats)) float32
    filled: np.ndarray  # (n,) readings in each row's window since the device (re)started
    imputed: np.ndarray  # (n, S) bool: the reading was missing and imputed
    state: WindowState


def forward_fill(last: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` (n, S) with each NaN replaced by the latest earlier value of its column, ``last`` (S,) before row 0."""
    stacked = np.concatenate([last[None, :], rows])
    present = ~np.isnan(stacked)
    source = np.where(present, np.arange(len(stacked))[:, None], 0)
    np.maximum.accumulate(source, axis=0, out=source)
    return stacked[source, np.arange(stacked.shape[1])][1:]


def gap_starts(previous: float, ts: np.ndarray, max_gap_s: float | None) -> np.ndarray:
    """Indices of the rows that start a new window: more than ``max_gap_s`` after the event before them."""
    if max_gap_s is None or not len(ts):
        return np.empty(0, dtype=np.int64)
    before = np.concatenate([[previous], ts[:-1]])
    return np.flatnonzero(ts - before > max_gap_s)


def advance(state: WindowState, ts: np.ndarray, values: np.ndarray, window: int, stats: Sequence[str],
            fill: np.ndarray, max_gap_s: float | None) -> Featurised:
    """Features for a device's next events (``ts`` ascending, none older than ``state.newest``), imputing missing
    readings (NaN) from the last value seen, else ``fill``, and restarting the window after each gap."""
    n, n_sensors = values.shape
    features = np.empty((n, n_sensors * len(stats)), dtype=np.float32)
    filled = np.empty(n, dtype=np.int64)
    tail = state.tail
    bounds = [0, *gap_starts(state.newest, ts, max_gap_s).tolist(), n]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if start == stop:
            continue
        if start > 0 or (len(bounds) > 2 and bounds[1] == 0):
            tail = tail[:0]
        rows = forward_fill(tail[-1] if len(tail) else fill, values[start:stop])
        features[start:stop] = window_features(tail, rows, window, tuple(stats))
        filled[start:stop] = window_fill(len(tail), stop - start, window)
        tail = np.concatenate([tail, rows])[-(window - 1):]
    newest = float(ts[-1]) if n else state.newest
    return Featurised(features, filled, np.isnan(values), WindowState(tail, newest))
