"""A time-series transformer (Hugging Face ``transformers``' PatchTST) as an anomaly model: it forecasts each channel's
reading from the readings before it in the window, and the forecast error is the anomaly evidence.

Its input is the feature spec's lagged readings (``features.lags``: ``<channel>__lag<k>``, after MLTransform's
scaling): ``lag<L-1>`` .. ``lag1`` are the past the model sees, ``lag0`` the reading it forecasts. As a network it
maps a feature row to the same row with each ``lag0`` replaced by its forecast, so the reconstruction-error machinery
the autoencoder uses (training loss, calibrated threshold, per-sensor shares, the pyfunc model) applies unchanged:
the error is each channel's squared forecast error. The transformer itself is saved the Hugging Face way
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


def lag_columns(spec: FeatureSpec) -> tuple[list[list[int]], list[int]]:
    """Feature column indices: the past (per step oldest first, per channel) and the forecast target (``lag0``)."""
    index = {name: i for i, name in enumerate(spec.feature_names)}
    if spec.lags < 2:
        raise ValueError(f"features.lags is {spec.lags}: a forecaster needs at least 2 lagged readings per channel")
    past = [[index[f"{channel}__lag{k}"] for channel in spec.channels] for k in range(spec.lags - 1, 0, -1)]
    return past, [index[f"{channel}__lag0"] for channel in spec.channels]


class PatchForecaster(nn.Module):
    """Feature rows -> the same rows with each channel's ``lag0`` forecast by PatchTST from its earlier lags."""

    def __init__(self, model: nn.Module, spec: FeatureSpec):
        super().__init__()
        self.model = model
        past, target = lag_columns(spec)
        self.register_buffer("past", torch.tensor(past), persistent=False)
        self.register_buffer("target", torch.tensor(target), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forecast = self.model(past_values=x[:, self.past]).prediction_outputs[:, 0, :]
        return x.index_copy(1, self.target, forecast)


def build_forecaster(spec: FeatureSpec, settings: dict[str, Any]) -> PatchForecaster:
    """A new PatchTST forecaster for ``spec``'s channels; ``settings``: PatchTSTConfig fields (d_model, ...)."""
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    config = PatchTSTConfig(num_input_channels=len(spec.channels), context_length=spec.lags - 1, prediction_length=1,
                            scaling=None, loss="mse", **settings)
    return PatchForecaster(PatchTSTForPrediction(config), spec)


def save_forecaster(network: PatchForecaster, path: Path) -> None:
    network.model.save_pretrained(str(path / HF_FOLDER), safe_serialization=True)


def load_forecaster(version: ModelVersion, device: torch.device | str = "cpu") -> PatchForecaster:
    """The version's forecaster (its files verified unchanged since it was opened), on ``device``."""
    from transformers import PatchTSTForPrediction

    version.verify()
    model = PatchTSTForPrediction.from_pretrained(str(version.path / HF_FOLDER), local_files_only=True)
    return PatchForecaster(model, version.feature_spec).to(device).eval()
