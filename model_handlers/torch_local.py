"""Local PyTorch inference on CPU or CUDA over batches of feature batches."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from features.schema import FeatureBatch
from model_handlers.bundle import ModelBundle
from model_handlers.networks import error_to_score, reconstruction_error

LOG = logging.getLogger(__name__)


def resolve_device(requested: str) -> torch.device:
    """'auto' takes CUDA when present; 'gpu' insists on it; 'cpu' never uses it."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "gpu":
        raise RuntimeError("model.device is 'gpu' but CUDA is not available on this worker")
    return torch.device("cpu")


class LoadedModel:
    """A network on its device with the bundle it came from."""

    def __init__(self, bundle: ModelBundle, device: torch.device):
        self.bundle = bundle
        self.device = device
        self.network = bundle.load_network(device)
        self.model_id = f"{bundle.name}/{bundle.version}"

    def errors(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
            return reconstruction_error(self.network, x).cpu().numpy()


def split_scores(batch: Sequence[FeatureBatch], errors: np.ndarray, threshold: float, model_id: str) -> Iterable[PredictionResult]:
    """One PredictionResult per feature batch: inference is (raw errors, anomaly scores in [0, 1))."""
    scores = error_to_score(errors, threshold)
    bounds = np.cumsum([0] + [len(b) for b in batch])
    for item, lo, hi in zip(batch, bounds[:-1], bounds[1:]):
        yield PredictionResult(item, (errors[lo:hi], scores[lo:hi]), model_id)


class TorchAnomalyHandler(ModelHandler[FeatureBatch, PredictionResult, LoadedModel]):
    """Scores FeatureBatches with a bundle's autoencoder: one forward pass per RunInference batch."""

    def __init__(self, bundle: ModelBundle, device: str = "auto", min_batch_size: int = 1, max_batch_size: int = 64):
        super().__init__()
        self._bundle = bundle
        self._device = device
        self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self) -> LoadedModel:
        model = LoadedModel(self._bundle, resolve_device(self._device))
        LOG.info("loaded %s on %s", model.model_id, model.device)
        return model

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            self._bundle = ModelBundle.open(model_path)

    def run_inference(
        self, batch: Sequence[FeatureBatch], model: LoadedModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        errors = model.errors(np.concatenate([b.features for b in batch]))
        return split_scores(batch, errors, model.bundle.threshold, model.model_id)

    def get_num_bytes(self, batch: Sequence[FeatureBatch]) -> int:
        return sum(b.features.nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return "iotml_torch"

    def batch_elements_kwargs(self) -> dict[str, int]:
        return self._batching
