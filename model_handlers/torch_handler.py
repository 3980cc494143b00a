"""``model.handler: torch``: a version's torch network, in process, on CPU or CUDA (decided on the worker at load).

Beam's ``PytorchModelHandlerTensor`` takes tensors and returns raw network outputs; ours takes the pipeline's
feature batches (one forward pass over the rows of a whole RunInference batch), applies the version's score mapping
and threshold, and returns the model output contract with per-sensor contributions.
"""
from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from model_handlers.contract import ModelOutput
from model_handlers.feature_batch_handler import FeatureBatchHandler
from model_handlers.model_version import ModelVersion
from model_handlers.networks import ARCHITECTURES
from model_handlers.settings import ModelSettings
from model_handlers.torch_model import LoadedModel, resolve_device

LOG = logging.getLogger(__name__)


class TorchSettings(ModelSettings):
    """``device``: ``auto`` takes CUDA when the worker has it; ``min/max_batch_size``: feature rows (events) per
    forward pass, gathered from the device batches of a bundle (a bundle's last pass takes what is left);
    ``cpu_threads``: torch's intra-op threads on a CPU worker (1: a network this small gains nothing from a parallel
    pool and pays to wake it on every pass; raise it for a large model)."""

    handler: Literal["torch"] = "torch"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    min_batch_size: int = Field(4096, ge=1)
    max_batch_size: int = Field(4096, ge=1)
    cpu_threads: int = Field(1, ge=1)


class TorchAnomalyHandler(FeatureBatchHandler):
    """Scores FeatureBatches with a version's network: one forward pass per RunInference batch."""

    metrics_namespace = "iotml_torch"

    def __init__(self, version: ModelVersion, device: str = "auto", min_batch_size: int = 4096,
                 max_batch_size: int = 4096, cpu_threads: int = 1):
        super().__init__(min_batch_size, max_batch_size)
        self._version = version
        self._device = device
        self._cpu_threads = cpu_threads

    def load_model(self) -> LoadedModel:
        device = resolve_device(self._device)
        if device.type == "cpu":
            torch.set_num_threads(self._cpu_threads)
        model = LoadedModel(self._version, device)
        LOG.info("loaded %s on %s", model.model_id, model.device)
        return model

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            self._version = ModelVersion.open(model_path)

    def score(self, features: np.ndarray, model: LoadedModel, device_ids: np.ndarray | None = None,
              times: np.ndarray | None = None) -> ModelOutput:
        return model.score(features, device_ids, times)


def torch_handler(settings: TorchSettings, version: ModelVersion) -> TorchAnomalyHandler:
    kind = version.architecture.get("kind")
    if kind not in ARCHITECTURES:
        raise ValueError(f"model.handler is 'torch' but {version.path} holds a {kind!r} model (torch serves "
                         f"{sorted(ARCHITECTURES)}); set model.handler to the kind that serves it")
    return TorchAnomalyHandler(version, settings.device, settings.min_batch_size, settings.max_batch_size,
                               settings.cpu_threads)
