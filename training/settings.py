"""The training package's config sections: the fleet simulator (``simulation``) and model training (``training``)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SimulationSettings(BaseModel):
    """The built-in fleet simulator: training data is fault-free, the replay stream has injected faults."""

    model_config = ConfigDict(extra="forbid")

    devices: int = Field(12, ge=1, le=10_000)
    duration_s: float = Field(3600.0, gt=0)
    train_duration_s: float = Field(7200.0, gt=0)
    interval_s: float = Field(1.0, gt=0)
    fault_rate: float = Field(1.0, ge=0)
    malformed_fraction: float = Field(0.002, ge=0, lt=0.5)
    seed: int = 7


class PatchTstSettings(BaseModel):
    """The PatchTST forecaster's size (``transformers.PatchTSTConfig`` fields): patches of ``patch_length``
    readings every ``patch_stride``, a ``d_model``-wide encoder of ``num_hidden_layers`` layers."""

    model_config = ConfigDict(extra="forbid")

    patch_length: int = Field(4, ge=1)
    patch_stride: int = Field(4, ge=1)
    d_model: int = Field(32, ge=4)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    ffn_dim: int = Field(64, ge=4)


class VertexServing(BaseModel):
    """``image_uri``: the serving container (``mlflow models build-docker -m models:/<name>/<version> -n <image>``,
    pushed to Artifact Registry); ``predict_route``, ``health_route``, ``port``: where it answers; ``env``: its
    environment variables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_uri: str = Field(min_length=1)
    predict_route: str = "/invocations"
    health_route: str = "/ping"
    port: int = Field(8080, ge=1, le=65535)
    env: dict[str, str] = {}


class DetectorSettings(BaseModel):
    """``smoothing``: the level and spread evidence's exponential weight per lag (0.1: about 20 readings);
    ``clip``: residuals beyond this many normal spreads count as this many; ``limits``: each evidence's alert limit
    in normal spreads of that evidence (spike, level, spread); ``harmonics``: of a seasonal period found in the
    history; ``min_seasonal_share``: the share of a channel's variance the harmonics must explain to be kept;
    ``ridge``: the cross-sensor regression's penalty, per row; ``max_trim``: the largest share of a history the refit
    may leave out as abnormal (0: no refit); ``settle_rows``: rows at the start of each device's history left out of
    the fit (machines settle after starting; None: one window of ``features.lags``)."""

    model_config = ConfigDict(extra="forbid")

    smoothing: float = Field(0.1, gt=0, lt=1)
    clip: float = Field(5.0, gt=0)
    limits: tuple[float, float, float] = (5.0, 8.0, 8.0)
    harmonics: int = Field(3, ge=1, le=10)
    min_seasonal_share: float = Field(0.2, ge=0, le=1)
    ridge: float = Field(1.0, ge=0)
    max_trim: float = Field(0.5, ge=0, lt=1)
    settle_rows: int | None = Field(None, ge=0)

    @field_validator("limits")
    @classmethod
    def _positive_limits(cls, limits: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(limits) <= 0:
            raise ValueError("limits must be positive (spike, level, spread)")
        return limits


class TrainingSettings(BaseModel):
    """Training and threshold calibration. ``model``: ``autoencoder`` (over the window features; ``hidden``) or
    ``patchtst`` (a transformer forecasting each reading from the ``features.lags`` before it; ``patchtst``,
    served by ``model.handler: transformers``), or ``detector`` (a residual model per device over the
    ``features.lags`` readings, calibrated evidence; ``detector``; ``training.detector``). ``registry``: where
    ``iotml train`` registers versions: ``mlflow`` (the tracking server or database), or ``vertex``: MLflow as
    well (runs, metrics and the manifest tag), and each version uploaded to the Vertex AI Model Registry of
    ``model.vertex`` with ``vertex_serving``'s container, its aliases mirrored from MLflow's
    (``training.vertex_register``). ``device_metadata``: the device metadata file (CSV or Parquet) joined to the
    training events when ``features.metadata`` lists fields; the stream gets the same records from the feature
    store (``iotml features push`` loads this file there)."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["autoencoder", "patchtst", "detector"] = "autoencoder"
    hidden: tuple[int, ...] = (32, 8)
    patchtst: PatchTstSettings = PatchTstSettings()
    detector: DetectorSettings = DetectorSettings()
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=8)
    learning_rate: float = Field(1e-3, gt=0)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    threshold_quantile: float = Field(0.999, gt=0.5, lt=1)
    threshold_margin: float = Field(1.5, ge=1.0)
    seed: int = 0
    device: Literal["auto", "cpu", "gpu"] = "auto"
    experiment: str = "iot-anomaly"
    registry: Literal["mlflow", "vertex"] = "mlflow"
    vertex_serving: VertexServing | None = None
    device_metadata: str | None = None
