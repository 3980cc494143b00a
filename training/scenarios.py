"""Labelled synthetic series with known anomalies: the yardstick for unsupervised causal detectors.

``scenario(name, seed)`` builds one seeded, deterministic series. Every scenario is built in noise units (each
channel's own gaussian noise has std 1; "sigma" below means that std), then each channel is mapped to physical units
by its own scale (log-uniform over 1e-3 .. 1e4; one channel near 1e-3 and one near 1e4 whenever there are two or
more) and offset (up to +-200 of its scale), so a detector that does not calibrate per channel is visibly hurt.
Periodic signals have a period of 50 .. ``warmup`` / 3 rows (at most 200), so the warm-up covers them 3+ times.

Scenarios (3-5 correlated channels unless said; about 3000-4000 rows, ``warmup`` + 2600..3600):

- ``spikes``: periodic + correlated noise; isolated single-row spikes of 3-6 sigma (either sign) on a random
  channel, 0.75 % of rows (as many as the 100-row spacing of anomalies allows; 1 % would not fit).
- ``level_shift``: periodic + noise; 3-4 level shifts of 1.5-4 sigma lasting 50-600 rows on one or more channels.
- ``drift_anomaly``: periodic + noise; 2-3 ramps away from normal on 1-2 channels, reaching 4-6 sigma over 100-600
  rows, then back within 20-200 rows (the whole ramp, up and down, is labelled).
- ``variance_change``: periodic + noise; 3-4 segments (100-600 rows) where the noise std of one or more channels is
  multiplied by 2.5-4 or divided by 4 (both kinds present).
- ``stuck``: periodic + noise; 3-4 segments (60-600 rows) where one channel freezes at its last value.
- ``broken_correlation``: every channel is gain x a common AR(1) latent (coefficient 0.99-0.995, stationary std 1,
  gains 6-12 sigma: correlation > 0.9, each channel's range wide) + its own noise; 3-4 segments (100-600 rows) where
  one channel follows an independent AR(1) latent of the same spread instead, starting from the common latent's value
  (no jump, unless that is within 2.5 noise sigma of the normal extremes: then it starts that far inside), reflected
  inside the latent's normal range less that margin, blended back over its last 40 rows; every value stays inside the
  channel's normal range [min, max] over its normal rows (the rare noisy value past it is held at it).
- ``seasonality_change``: a strong sinusoid (3-6 sigma amplitude) + noise; 3-4 segments (100-600 rows) where, on one
  or more channels, the phase jumps by half a period or the period is x1.5 or /1.5 (phase continuous at the start);
  amplitude and mean stay. Both kinds present.
- ``regime_changes``: ``max(12000, warmup + 2 grace + 4500)`` rows of periodic + noise with a normal slow drift (5
  sigma over 6000 rows on 1-2 channels, then held) and 2 permanent regime changes (level steps of 5-8 sigma that
  persist: the first on some channels, the second on all), both labelled 0. Rows from each regime change up to
  ``grace`` rows after it are ungraded (a detector needs that long to accept a new normal) and hold no anomaly.
  Injected anomalies, labelled: per graded stretch, 2 level shifts (2-4 sigma, 50-300 rows) and 3 spikes (3-6 sigma).
- ``single_column``: one channel, periodic + noise, with 6-10 spikes, one level shift (2-4 sigma, 100-600 rows) and
  one variance change (x2.5-4 or /4, 100-600 rows).

Anomaly segments never overlap, start at least 100 rows after the warm-up, and leave at least 100 normal rows
between them (and before any ungraded stretch). Also here: the causal rolling z-score baseline and the grading
metrics (average precision, best F1), in plain numpy.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence

import numpy as np

SCENARIOS: tuple[str, ...] = (
    "spikes", "level_shift", "drift_anomaly", "variance_change", "stuck", "broken_correlation",
    "seasonality_change", "regime_changes", "single_column",
)
GAP = 100  # normal rows around every anomaly segment
_Built = tuple[np.ndarray, list["Segment"]]


@dataclasses.dataclass(frozen=True)
class Segment:
    """Rows [start, stop) where ``kind`` happens on ``channels``; non-anomalous ones (normal drift, regime change +
    grace) are labelled 0."""

    start: int
    stop: int
    kind: str
    channels: tuple[int, ...]
    anomalous: bool = True


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario:
    """One labelled series: ``values`` (n, S) float64, ``labels`` (n,) int8 (1 = anomalous row), ``graded`` (n,) bool
    (False: warm-up and don't-care rows)."""

    name: str
    values: np.ndarray
    labels: np.ndarray
    graded: np.ndarray
    segments: tuple[Segment, ...] = ()
    warmup: int = 400


def scenario(name: str, seed: int, warmup: int = 400, grace: int = 2000) -> Scenario:
    """The seeded, deterministic series ``name`` (one of ``SCENARIOS``); ``grace`` is used by ``regime_changes``."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    if warmup < 60:
        raise ValueError(f"warmup must be at least 60 rows, not {warmup}")
    rng = np.random.default_rng([zlib.crc32(name.encode()), seed])
    z, segments = _BUILDERS[name](rng, warmup, grace) if name == "regime_changes" else _BUILDERS[name](rng, warmup)
    n = len(z)
    labels = np.zeros(n, dtype=np.int8)
    graded = np.arange(n) >= warmup
    for segment in segments:
        if segment.anomalous:
            labels[segment.start:segment.stop] = 1
        elif segment.kind == "regime_change":
            graded[segment.start:segment.stop] = False
    values = _physical(rng, z)
    return Scenario(name, values, labels, graded, tuple(sorted(segments, key=lambda s: s.start)), warmup)


# ---------------------------------------------------------------------------------------------------- building blocks

def _physical(rng: np.random.Generator, z: np.ndarray) -> np.ndarray:
    """Noise units -> physical units: per channel scale (1e-3 .. 1e4, log-uniform) and offset."""
    s = z.shape[1]
    exponents = rng.uniform(-3.0, 4.0, s)
    if s >= 2:
        low, high = rng.choice(s, 2, replace=False)
        exponents[low], exponents[high] = rng.uniform(-3.4, -2.6), rng.uniform(3.6, 4.4)
    scale = 10.0 ** exponents
    offset = scale * rng.uniform(-200.0, 200.0, s)
    return offset + scale * z


def _noise(rng: np.random.Generator, n: int, s: int) -> np.ndarray:
    """Gaussian noise of std 1 per channel, correlated across channels through a common part (rho 0.2-0.6)."""
    rho = rng.uniform(0.2, 0.6)
    return np.sqrt(rho) * rng.standard_normal((n, 1)) + np.sqrt(1.0 - rho) * rng.standard_normal((n, s))


def _period(rng: np.random.Generator, warmup: int) -> float:
    high = min(200.0, warmup / 3.0)
    return float(rng.uniform(min(50.0, high), high))


def _periodic(rng: np.random.Generator, n: int, s: int, warmup: int, amplitude=(1.0, 3.0)) -> np.ndarray:
    """A shared period; per channel amplitude, phase and a small second harmonic."""
    t = np.arange(n)[:, None] * (2 * np.pi / _period(rng, warmup))
    amp, phase = rng.uniform(*amplitude, s), rng.uniform(0, 2 * np.pi, s)
    return amp * (np.sin(t + phase) + rng.uniform(0.0, 0.3, s) * np.sin(2 * t + 2 * phase))


def _layout(rng: np.random.Generator, lengths: Sequence[int], lo: int, hi: int, gap: int = GAP) -> list[int]:
    """Random starts for segments of ``lengths`` (in that order) inside [lo, hi), ``gap`` rows apart and from both
    ends."""
    lengths = [int(x) for x in lengths]
    slack = (hi - lo) - sum(lengths) - gap * (len(lengths) + 1)
    if slack < 0:
        raise ValueError(f"segments of {sum(lengths)} rows do not fit in rows {lo}..{hi} with {gap}-row gaps")
    extra = np.diff([0, *np.sort(rng.integers(0, slack + 1, len(lengths))), slack])
    starts, at = [], lo
    for length, more in zip(lengths, extra[:-1]):
        at += gap + int(more)
        starts.append(at)
        at += length
    return starts


def _channels(rng: np.random.Generator, s: int, most: int | None = None) -> tuple[int, ...]:
    """A random non-empty subset of channels (at most ``most``)."""
    k = int(rng.integers(1, min(s, most or s) + 1))
    return tuple(sorted(int(c) for c in rng.choice(s, k, replace=False)))


def _sign(rng: np.random.Generator, size: int | None = None):
    return rng.choice([-1.0, 1.0], size)


def _size(rng: np.random.Generator, warmup: int, extra: tuple[int, int] = (2600, 3600)) -> tuple[int, int]:
    """(rows, channels) of a multi-sensor scenario: warm-up + ``extra`` rows, 3-5 channels."""
    return warmup + int(rng.integers(extra[0], extra[1] + 1)), int(rng.integers(3, 6))


def _spike_into(rng: np.random.Generator, z: np.ndarray, start: int, channels: tuple[int, ...]) -> None:
    z[start, list(channels)] += rng.uniform(3.0, 6.0, len(channels)) * _sign(rng, len(channels))


# ---------------------------------------------------------------------------------------------------------- scenarios

def _spikes(rng: np.random.Generator, warmup: int) -> _Built:
    n, s = _size(rng, warmup, (3400, 3600))
    z = _periodic(rng, n, s, warmup) + _noise(rng, n, s)
    starts = _layout(rng, [1] * round(0.0075 * n), warmup, n)
    segments = []
    for start in starts:
        channels = (int(rng.integers(s)),)
        _spike_into(rng, z, start, channels)
        segments.append(Segment(start, start + 1, "spike", channels))
    return z, segments


def _level_shift(rng: np.random.Generator, warmup: int) -> _Built:
    n, s = _size(rng, warmup)
    z = _periodic(rng, n, s, warmup) + _noise(rng, n, s)
    lengths = rng.integers(50, 601, int(rng.integers(3, 5)))
    segments = []
    for start, length in zip(_layout(rng, lengths, warmup, n), lengths):
        channels = _channels(rng, s)
        z[start:start + length, list(channels)] += rng.uniform(1.5, 4.0, len(channels)) * _sign(rng, len(channels))
        segments.append(Segment(start, start + int(length), "level_shift", channels))
    return z, segments


def _drift_anomaly(rng: np.random.Generator, warmup: int) -> _Built:
    n, s = _size(rng, warmup)
    z = _periodic(rng, n, s, warmup) + _noise(rng, n, s)
    k = int(rng.integers(2, 4))
    up = rng.integers(100, 601, k)
    down = np.array([rng.integers(20, max(21, min(200, u // 2)) + 1) for u in up])
    segments = []
    for start, u, d in zip(_layout(rng, up + down, warmup, n), up, down):
        shape = np.concatenate([np.arange(1, u + 1) / u, np.arange(d, 0, -1) / (d + 1)])
        channels = _channels(rng, s, 2)
        peak = rng.uniform(4.0, 6.0, len(channels)) * _sign(rng, len(channels))
        z[start:start + u + d, list(channels)] += shape[:, None] * peak
        segments.append(Segment(start, start + int(u + d), "drift", channels))
    return z, segments


def _variance_change(rng: np.random.Generator, warmup: int) -> _Built:
    n, s = _size(rng, warmup)
    base, noise = _periodic(rng, n, s, warmup), _noise(rng, n, s)
    k = int(rng.integers(3, 5))
    kinds = rng.permutation(["variance_up", "variance_down", *rng.choice(["variance_up", "variance_down"], k - 2)])
    lengths = rng.integers(100, 601, k)
    segments = []
    for start, length, kind in zip(_layout(rng, lengths, warmup, n), lengths, kinds):
        channels = _channels(rng, s)
        factor = rng.uniform(2.5, 4.0) if kind == "variance_up" else 0.25
        noise[start:start + length, list(channels)] *= factor
        segments.append(Segment(start, start + int(length), str(kind), channels))
    return base + noise, segments


def _stuck(rng: np.random.Generator, warmup: int) -> _Built:
    n, s = _size(rng, warmup)
    z = _periodic(rng, n, s, warmup) + _noise(rng, n, s)
    lengths = rng.integers(60, 601, int(rng.integers(3, 5)))
    segments = []
    for start, length in zip(_layout(rng, lengths, warmup, n), lengths):
        c = int(rng.integers(s))
        z[start:start + length, c] = z[start - 1, c]
        segments.append(Segment(start, start + int(length), "stuck", (c,)))
    return z, segments


def _ar1(rng: np.random.Generator, n: int, phi: float, first: float) -> np.ndarray:
    """AR(1) path of stationary std 1 starting after ``first``."""
    out = np.empty(n)
    shocks = rng.standard_normal(n) * np.sqrt(1.0 - phi * phi)
    previous = first
    for t in range(n):
        previous = out[t] = phi * previous + shocks[t]
    return out


def _broken_correlation(rng: np.random.Generator, warmup: int) -> _Built:
    n, s = _size(rng, warmup)
    phi = rng.uniform(0.99, 0.995)
    latent = _ar1(rng, n, phi, rng.standard_normal())
    gain = rng.uniform(6.0, 12.0, s)
    drivers = np.repeat(latent[:, None], s, axis=1)
    lengths = rng.integers(100, 601, int(rng.integers(3, 5)))
    starts = _layout(rng, lengths, warmup, n)
    normal = np.ones(n, dtype=bool)
    for start, length in zip(starts, lengths):
        normal[start:start + length] = False
    lo, hi = latent[normal].min(), latent[normal].max()
    segments = []
    for start, length in zip(starts, lengths):
        c = int(rng.integers(s))
        margin = min(2.5 / gain[c], 0.25 * (hi - lo))  # 2.5 noise sigma: the noise rarely leaves the normal range
        low, high = lo + margin, hi - margin
        own = _ar1(rng, int(length), phi, np.clip(latent[start - 1], low, high))
        for _ in range(8):  # reflect into the latent's normal range, less the margin
            own = np.where(own > high, 2 * high - own, np.where(own < low, 2 * low - own, own))
        own = np.clip(own, low, high)
        blend = min(40, int(length) // 4)
        weight = np.concatenate([np.zeros(int(length) - blend), np.arange(1, blend + 1) / (blend + 1)])
        rows = slice(start, start + int(length))
        drivers[rows, c] = own + weight * (latent[rows] - own)
        segments.append(Segment(start, start + int(length), "decoupled", (c,)))
    z = gain * drivers + rng.standard_normal((n, s))
    z_normal = z[normal]
    for segment in segments:  # the rare noisy value past the normal extremes is held at them
        c = segment.channels[0]
        z[segment.start:segment.stop, c] = np.clip(z[segment.start:segment.stop, c], z_normal[:, c].min(),
                                                   z_normal[:, c].max())
    return z, segments


def _seasonality_change(rng: np.random.Generator, warmup: int) -> _Built:
    n, s = _size(rng, warmup)
    period = _period(rng, warmup)
    amp, offset = rng.uniform(3.0, 6.0, s), rng.uniform(0, 2 * np.pi, s)
    phase = np.repeat((np.arange(n) * (2 * np.pi / period))[:, None], s, axis=1)
    k = int(rng.integers(3, 5))
    kinds = rng.permutation(["phase_jump", "period_change", *rng.choice(["phase_jump", "period_change"], k - 2)])
    lengths = rng.integers(100, 601, k)
    segments = []
    for start, length, kind in zip(_layout(rng, lengths, warmup, n), lengths, kinds):
        channels = list(_channels(rng, s))
        rows = slice(start, start + int(length))
        if kind == "phase_jump":
            phase[rows, channels] += np.pi
        else:
            stretch = 1.5 if rng.random() < 0.5 else 1 / 1.5
            phase[rows, channels] = (phase[start, 0] + np.arange(length) * (2 * np.pi / (period * stretch)))[:, None]
        segments.append(Segment(start, start + int(length), str(kind), tuple(channels)))
    return amp * np.sin(phase + offset) + _noise(rng, n, s), segments


def _regime_changes(rng: np.random.Generator, warmup: int, grace: int = 2000) -> _Built:
    n, s = max(12000, warmup + 2 * grace + 4500), int(rng.integers(3, 6))
    z = _periodic(rng, n, s, warmup) + _noise(rng, n, s)
    graded_rows = n - warmup - 2 * grace
    share = rng.uniform(0.85, 1.15, 3)
    stretch = np.floor(graded_rows * share / share.sum()).astype(int)
    changes = (warmup + int(stretch[0]), warmup + int(stretch[0] + stretch[1]) + grace)
    segments: list[Segment] = []
    drift_rows = min(6000, n - warmup)
    drift_start = warmup + int(rng.integers(0, n - warmup - drift_rows + 1))
    channels = _channels(rng, s, 2)
    ramp = np.clip((np.arange(n) - drift_start + 1) / drift_rows, 0.0, 1.0)
    z[:, list(channels)] += ramp[:, None] * (5.0 * _sign(rng, len(channels)))
    segments.append(Segment(drift_start, drift_start + drift_rows, "normal_drift", channels, anomalous=False))
    for i, change in enumerate(changes):
        channels = _channels(rng, s) if i == 0 else tuple(range(s))
        z[change:, list(channels)] += rng.uniform(5.0, 8.0, len(channels)) * _sign(rng, len(channels))
        segments.append(Segment(change, change + grace, "regime_change", channels, anomalous=False))
    bounds = ((warmup, changes[0]), (changes[0] + grace, changes[1]), (changes[1] + grace, n))
    for lo, hi in bounds:
        lengths = rng.permutation([*rng.integers(50, 301, 2), 1, 1, 1])
        for start, length in zip(_layout(rng, lengths, lo, hi), lengths):
            if length == 1:
                channels = (int(rng.integers(s)),)
                _spike_into(rng, z, start, channels)
                segments.append(Segment(start, start + 1, "spike", channels))
            else:
                channels = _channels(rng, s)
                z[start:start + length, list(channels)] += (rng.uniform(2.0, 4.0, len(channels))
                                                            * _sign(rng, len(channels)))
                segments.append(Segment(start, start + int(length), "level_shift", channels))
    return z, segments


def _single_column(rng: np.random.Generator, warmup: int) -> _Built:
    n = warmup + int(rng.integers(2600, 3601))
    base, noise = _periodic(rng, n, 1, warmup), _noise(rng, n, 1)
    kinds = rng.permutation(["spike"] * int(rng.integers(6, 11)) + ["level_shift", "variance_change"])
    lengths = [1 if kind == "spike" else int(rng.integers(100, 601)) for kind in kinds]
    shift = np.zeros((n, 1))
    segments = []
    for start, length, kind in zip(_layout(rng, lengths, warmup, n), lengths, kinds):
        rows = slice(start, start + length)
        if kind == "spike":
            shift[start] += rng.uniform(3.0, 6.0) * _sign(rng)
        elif kind == "level_shift":
            shift[rows] += rng.uniform(2.0, 4.0) * _sign(rng)
        else:
            noise[rows] *= rng.uniform(2.5, 4.0) if rng.random() < 0.5 else 0.25
        segments.append(Segment(start, start + length, str(kind), (0,)))
    return base + noise + shift, segments


_BUILDERS: dict[str, Callable[..., _Built]] = {
    "spikes": _spikes, "level_shift": _level_shift, "drift_anomaly": _drift_anomaly,
    "variance_change": _variance_change, "stuck": _stuck, "broken_correlation": _broken_correlation,
    "seasonality_change": _seasonality_change, "regime_changes": _regime_changes, "single_column": _single_column,
}


# ------------------------------------------------------------------------------------------------ baseline and grading

def rolling_zscore(values: np.ndarray, window: int) -> np.ndarray:
    """Causal rolling z-score: for row t, max over columns of |x_t - mean| / std, mean and std (ddof 0) over rows
    t-window .. t-1; rows with fewer than ``window`` rows before them score 0.

    std is floored at 1e-12 x the larger of |mean| and |x_t| (plus the smallest normal float), so a frozen window
    gives a huge score for any change and 0 for none. Each column is centred on its first value (a causal constant)
    before the cumulative sums, to keep large offsets from cancelling the variance.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    n = len(x)
    scores = np.zeros(n)
    if n <= window:
        return scores
    centred = x - x[:1]
    zero = np.zeros((1, x.shape[1]))
    s1 = np.concatenate([zero, np.cumsum(centred, axis=0)])
    s2 = np.concatenate([zero, np.cumsum(centred * centred, axis=0)])
    rows = np.arange(window, n)
    mean = (s1[rows] - s1[rows - window]) / window
    var = np.maximum((s2[rows] - s2[rows - window]) / window - mean * mean, 0.0)
    deviation = np.abs(centred[rows] - mean)
    floor = 1e-12 * np.maximum(np.abs(mean + x[:1]), np.abs(x[rows])) + np.finfo(np.float64).tiny
    scores[window:] = (deviation / np.maximum(np.sqrt(var), floor)).max(axis=1)
    return scores


def _ranked(labels: np.ndarray, scores: np.ndarray, graded: np.ndarray | None):
    """(true positives, false positives, thresholds) at each distinct score, descending; positives total."""
    mask = np.ones(len(labels), dtype=bool) if graded is None else np.asarray(graded, dtype=bool)
    y = np.asarray(labels)[mask] > 0
    s = np.asarray(scores, dtype=np.float64)[mask]
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], dtype=int)
    tp = np.cumsum(y)[last]
    return tp, (last + 1) - tp, s[last], int(y.sum())


def pr_auc(labels: np.ndarray, scores: np.ndarray, graded: np.ndarray | None = None) -> float:
    """Average precision over graded rows (sklearn's ``average_precision_score``); NaN without positives."""
    tp, fp, _, positives = _ranked(labels, scores, graded)
    if positives == 0:
        return float("nan")
    recall = tp / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * tp / (tp + fp)))


def best_f1(labels: np.ndarray, scores: np.ndarray, graded: np.ndarray | None = None) -> tuple[float, float]:
    """(best F1, its threshold) over all thresholds, flagging graded rows with score >= threshold; (0, inf) without
    positives."""
    tp, fp, thresholds, positives = _ranked(labels, scores, graded)
    if positives == 0:
        return 0.0, float("inf")
    f1 = 2 * tp / (tp + fp + positives)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float, graded: np.ndarray | None = None) -> float:
    """F1 of flagging graded rows with score >= ``threshold``."""
    mask = np.ones(len(labels), dtype=bool) if graded is None else np.asarray(graded, dtype=bool)
    y, p = np.asarray(labels)[mask] > 0, np.asarray(scores)[mask] >= threshold
    tp = int((y & p).sum())
    return 2 * tp / max(1, int(y.sum()) + int(p.sum()))
