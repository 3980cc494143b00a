"""A time-series transformer (Hugging Face ``transformers``' PatchTST) as an anomaly model: it forecasts each channel's
newest readings from the ones before them in the window, and the forecast error is the anomaly evidence.

Its input is the feature spec's lagged readings (``features.lags``: ``<channel>__lag<k>``, after MLTransform's
scaling): of L lags, the oldest L - H are the past the model sees and the newest H (``horizon``, L // 2) the
readings it forecasts. Forecasting H steps rather than one keeps an anomalous reading in the forecast span for H
consecutive events, so its evidence lasts long enough for the alert debounce. As a network it maps a feature row to
the same row with the forecast readings replaced by their forecasts, so the reconstruction-error machinery the
autoencoder uses (training loss, calibrated threshold, per-sensor shares, the pyfunc model) applies unchanged: the
error is each channel's squared forecast error. The transformer itself is saved the Hugging Face way
(``save_pretrained`` into the version's ``hf/`` folder: ``config.json`` + safetensors) and loaded with
``from_pretrained``; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from features.spec import FeatureSpec
from model_handlers.model_version import ModelVersion

KIND = "patchtst"
HF_FOLDER = "hf"


def horizon(spec: FeatureSpec) -> int:
    """How many of the newest lagged readings are forecast (the rest are the context)."""
    if spec.lags < 2:
        raise ValueError(f"features.lags is {spec.lags}: a forecaster needs at least 2 lagged readings per channel")
    return spec.lags // 2


def lag_columns(spec: FeatureSpec) -> tuple[list[list[int]], list[list[int]]]:
    """Feature column indices, per step (oldest first) per channel: the context, and the readings forecast."""
    index = {name: i for i, name in enumerate(spec.feature_names)}
    steps = [[index[f"{channel}__lag{k}"] for channel in spec.channels] for k in range(spec.lags - 1, -1, -1)]
    cut = spec.lags - horizon(spec)
    return steps[:cut], steps[cut:]


class PatchForecaster(nn.Module):
    """Feature rows -> the same rows with each channel's newest ``horizon`` readings forecast by PatchTST from the
    lags before them."""

    def __init__(self, model: nn.Module, spec: FeatureSpec):
        super().__init__()
        self.model = model
        past, target = lag_columns(spec)
        self.register_buffer("past", torch.tensor(past), persistent=False)
        self.register_buffer("target", torch.tensor(target).flatten(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forecast = self.model(past_values=x[:, self.past]).prediction_outputs  # (rows, horizon, channels)
        return x.index_copy(1, self.target, forecast.reshape(len(x), -1))


def build_forecaster(spec: FeatureSpec, settings: dict[str, Any]) -> PatchForecaster:
    """A new PatchTST forecaster for ``spec``'s channels; ``settings``: PatchTSTConfig fields (d_model, ...)."""
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    ahead = horizon(spec)
    config = PatchTSTConfig(num_input_channels=len(spec.channels), context_length=spec.lags - ahead,
                            prediction_length=ahead, scaling=None, loss="mse", **settings)
    return PatchForecaster(PatchTSTForPrediction(config), spec)


def save_forecaster(network: PatchForecaster, path: Path) -> None:
    network.model.save_pretrained(str(path / HF_FOLDER), safe_serialization=True)


def load_forecaster(version: ModelVersion, device: torch.device | str = "cpu") -> PatchForecaster:
    """The version's forecaster (its files verified unchanged since it was opened), on ``device``."""
    from transformers import PatchTSTForPrediction

    version.verify()
    model = PatchTSTForPrediction.from_pretrained(str(version.path / HF_FOLDER), local_files_only=True)
    return PatchForecaster(model, version.feature_spec).to(device).eval()
