"""``model.handler: torch``: a version's torch network, in process, on CPU or CUDA (decided on the worker at load).

Beam's ``PytorchModelHandlerTensor`` takes tensors and returns raw network outputs; ours takes the pipeline's
feature batches (one forward pass over the rows of a whole RunInference batch), applies the version's score mapping
and threshold, and returns the model output contract with per-sensor contributions.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from pydantic import Field

from features.schema import FeatureBatch, feature_rows
from model_handlers.contract import split_outputs
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


class TorchAnomalyHandler(ModelHandler[FeatureBatch, PredictionResult, LoadedModel]):
    """Scores FeatureBatches with a version's autoencoder: one forward pass per RunInference batch."""

    def __init__(self, version: ModelVersion, device: str = "auto", min_batch_size: int = 4096,
                 max_batch_size: int = 4096, cpu_threads: int = 1):
        super().__init__()
        self._version = version
        self._device = device
        self._cpu_threads = cpu_threads
        self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

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

    def run_inference(
        self, batch: Sequence[FeatureBatch], model: LoadedModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        output = model.score(np.concatenate([b.features for b in batch]))
        model_id = str(model.model_id)
        return [PredictionResult(item, part, model_id)
                for item, part in zip(batch, split_outputs([len(b) for b in batch], output))]

    def get_num_bytes(self, batch: Sequence[FeatureBatch]) -> int:
        return sum(b.features.nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return "iotml_torch"

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {**self._batching, "element_size_fn": feature_rows}


def torch_handler(settings: TorchSettings, version: ModelVersion) -> TorchAnomalyHandler:
    kind = version.architecture.get("kind")
    if kind not in ARCHITECTURES:
        raise ValueError(f"model.handler is 'torch' but {version.path} holds a {kind!r} model (torch serves "
                         f"{sorted(ARCHITECTURES)}); set model.handler to the kind that serves it")
    return TorchAnomalyHandler(version, settings.device, settings.min_batch_size, settings.max_batch_size,
                               settings.cpu_threads)
