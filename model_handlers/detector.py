"""The residual detector: each device's own model of normal behaviour, scored as calibrated evidence.

Per device it holds what its normal history showed (``training.detector`` fits it): each channel's seasonal profile
(a few harmonics of a period found in the history, when the history covers it), robust location and scale, how each
channel follows the others (a ridge regression: cross-sensor relations), and the normal spread of three kinds of
evidence it computes from a row's lagged readings (``features.lags``):

- ``spike``: how far the newest reading's cross-sensor residual jumps, both from the one before it and from the
  recent ones' level (the smaller), in units of their own recent noise where that is above normal: a drift, a
  sustained deviation or a noisy stretch is not a spike, and the reading after a spike is not one either; against
  the larger of its limit in normal spreads and half again the largest jump the history showed (heavy-tailed sensors
  get a limit their history clears);
- ``level``: an exponentially weighted mean (``smoothing``) of the residuals over the lags, each clipped at ``clip``
  before averaging, so a sustained deviation accumulates while one wild reading cannot dominate, and the evidence
  falls back quickly once a fault ends;
- ``spread``: the same weighted mean of the log squared steps between consecutive readings (clipped), which falls
  when a sensor sticks and rises when it gets noisier.

- ``range``: the smallest residual over the lags, against ``RANGE_MARGIN`` times the largest of the history: a
  reading far beyond anything normal for a whole window alerts even on a sensor whose level wanders too much for
  the level evidence (whose clip caps it) to reach its limit.

Each evidence is divided by its normal spread on the device's own history and by its limit (``limits``): a channel's
evidence ``v`` is 1.0 at the alert limit on every device and series, whatever the sensors' units (the calibration
that lets one alert threshold serve a whole fleet). The raw score is the largest ``v`` over channels and kinds; the
anomaly score ``v / (1 + v)`` puts the limit at 0.5 (``model_handlers.contract.error_to_score``); each channel's
share of the summed ``v`` is its contribution.

Written here rather than taken from a library: the per-device tables (one model per device in one network, chosen
per row) and the clipped, lagged evidence are what the streaming pipeline needs from a stateless model call; none of
PyOD, river or Merlion's detectors are per-device, batched over devices and free of per-device state at once.
"""
from __future__ import annotations

import math

import torch
from torch import nn

KIND = "detector"
EVIDENCE = ("spike", "level", "spread", "range")
STEP_FLOOR = 1e-2  # steps below a hundredth of a channel's typical step count as no step (its log is floored)


def lag_weights(lags: int, smoothing: float) -> torch.Tensor:
    """Exponential weights over lags 0..lags-1 (newest first), summing to 1."""
    weights = (1.0 - smoothing) ** torch.arange(lags, dtype=torch.float64)
    return (weights / weights.sum()).float()


class ResidualDetector(nn.Module):
    """Per-device residual models of ``channels`` channels over ``lags`` lagged readings, device 0 being the fleet's
    (the fallback for devices the history did not hold).

    ``forward(lagged (n, channels * lags) channel-major, times (n,) epoch seconds, devices (n,) int64)`` returns the
    evidence ``v`` of each row and channel (n, channels): the largest of its three calibrated evidences.
    """

    def __init__(self, channels: int, lags: int, devices: int, harmonics: int = 3, smoothing: float = 0.1,
                 clip: float = 5.0, limits: tuple[float, float, float] = (5.0, 8.0, 8.0)):
        super().__init__()
        if lags < 2:
            raise ValueError("the detector needs features.lags >= 2")
        self.channels, self.lags, self.harmonics = channels, lags, harmonics
        self.smoothing, self.clip, self.limits = smoothing, clip, tuple(limits)
        shapes = {
            "location": (devices, channels), "scale": (devices, channels), "coupling": (devices, channels, channels),
            "period": (devices, channels), "seasonal": (devices, channels, 2 * harmonics), "interval": (devices,),
            "residual_mean": (devices, channels), "residual_std": (devices, channels),
            "level_mean": (devices, channels), "level_std": (devices, channels),
            "spread_mean": (devices, channels), "spread_std": (devices, channels),
            "step_mean": (devices, channels), "step_std": (devices, channels),
            "spike_limit": (devices, channels), "step_scale": (devices, channels), "range_limit": (devices, channels),
        }
        for name, shape in shapes.items():
            # periods and intervals multiply epoch seconds (~1.7e9) into phases: float64, or the phase is noise
            dtype = torch.float64 if name in ("period", "interval") else torch.float32
            zero = "mean" in name or name in ("location", "coupling", "period", "seasonal")
            self.register_buffer(name, (torch.zeros if zero else torch.ones)(shape, dtype=dtype))
        self.register_buffer("weights", lag_weights(lags, smoothing))

    def seasonal_part(self, times: torch.Tensor, devices: torch.Tensor) -> torch.Tensor:
        """Each row's seasonal profile value per channel and lag (n, channels, lags); 0 without a period."""
        period = self.period[devices]  # (n, S)
        steps = torch.arange(self.lags, device=times.device, dtype=torch.float64)
        lag_times = times.double()[:, None] - steps[None, :] * self.interval[devices][:, None]  # (n, L)
        safe = torch.where(period > 0, period, torch.ones_like(period))
        phase = 2 * math.pi * lag_times[:, None, :] / safe[:, :, None]  # (n, S, L)
        orders = torch.arange(1, self.harmonics + 1, device=times.device, dtype=torch.float64)
        angles = phase[..., None] * orders  # (n, S, L, H)
        basis = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()  # (n, S, L, 2H)
        profile = torch.einsum("nslh,nsh->nsl", basis, self.seasonal[devices])
        return torch.where(period[..., None] > 0, profile, torch.zeros_like(profile))

    def standardised(self, lagged: torch.Tensor, times: torch.Tensor, devices: torch.Tensor) -> torch.Tensor:
        """Readings without their seasonal profile, centred and scaled per device and channel (n, S, L)."""
        x = lagged.reshape(len(lagged), self.channels, self.lags).float()
        x = x - self.seasonal_part(times, devices)
        return (x - self.location[devices][..., None]) / self.scale[devices][..., None]

    def residuals(self, z: torch.Tensor, devices: torch.Tensor) -> torch.Tensor:
        """Each channel less what the other channels predict of it (the coupling has a zero diagonal) (n, S, L)."""
        return z - torch.einsum("nji,nil->njl", self.coupling[devices], z)

    def raw_evidence(self, lagged: torch.Tensor, times: torch.Tensor,
                     devices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Before calibration: the residuals (n, S, L); the newest residual's jump (the smaller of its step from the
        one before and its distance from the clipped weighted mean of the earlier ones, in units of their own recent
        noise where that exceeds the normal), the clipped weighted level and the clipped weighted log step of each
        channel (n, S) each."""
        z = self.standardised(lagged, times, devices)
        residual = self.residuals(z, devices)
        r = (residual - self.residual_mean[devices][..., None]) / self.residual_std[devices][..., None]
        clipped = r.clamp(-self.clip, self.clip)
        level = (clipped * self.weights).sum(dim=-1)
        steps = r[..., :-1] - r[..., 1:]
        earlier = self.weights[1:-1] / self.weights[1:-1].sum()
        recent = (steps[..., 1:].square() * earlier).sum(dim=-1).sqrt()
        from_level = r[..., 0] - (clipped[..., 1:] * self.weights[1:]).sum(dim=-1) / self.weights[1:].sum()
        jump = torch.where(steps[..., 0].abs() < from_level.abs(), steps[..., 0], from_level)
        spike = jump / recent.clamp_min(1.0)
        steps = self.log_steps(z, devices)
        steps = (steps - self.step_mean[devices][..., None]) / self.step_std[devices][..., None]
        spread = (steps.clamp(-self.clip, self.clip) * self.weights[:-1]).sum(dim=-1) / self.weights[:-1].sum()
        return residual, spike, level, spread

    def log_steps(self, z: torch.Tensor, devices: torch.Tensor) -> torch.Tensor:
        """Log squared steps between consecutive readings, in units of the channel's typical step (floored: a
        stuck sensor's zero steps count as ``STEP_FLOOR`` of one) (n, S, L - 1)."""
        steps = (z[..., :-1] - z[..., 1:]) / self.step_scale[devices][..., None]
        return steps.square().clamp_min(STEP_FLOOR ** 2).log()

    def evidence(self, lagged: torch.Tensor, times: torch.Tensor, devices: torch.Tensor) -> torch.Tensor:
        """Calibrated evidence per row, channel and kind (n, S, 4; ``EVIDENCE`` order): 1.0 is the kind's alert
        limit."""
        residual, spike, level, spread = self.raw_evidence(lagged, times, devices)
        level = (level - self.level_mean[devices]) / self.level_std[devices]
        spread = (spread - self.spread_mean[devices]) / self.spread_std[devices]
        limits = torch.tensor(self.limits[1:], device=lagged.device)
        sustained = torch.stack([level.abs(), spread.abs()], dim=-1) / limits
        centred = residual - self.residual_mean[devices][..., None]
        out_of_range = centred.abs().amin(dim=-1) / self.range_limit[devices]
        return torch.cat([(spike.abs() / self.spike_limit[devices])[..., None], sustained, out_of_range[..., None]],
                         dim=-1)

    def forward(self, lagged: torch.Tensor, times: torch.Tensor, devices: torch.Tensor) -> torch.Tensor:
        return self.evidence(lagged, times, devices).amax(dim=-1)


def detector_scores(evidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel evidence (n, S) -> each row's raw score (the largest) and each channel's share of the sum."""
    total = evidence.sum(dim=1, keepdim=True)
    shares = evidence / total.clamp_min(torch.finfo(evidence.dtype).tiny)
    return evidence.amax(dim=1), shares
