"""The Beam ModelHandler for local PyTorch inference (CPU or CUDA) over batches of feature batches."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from features.schema import FeatureBatch
from model_handlers.bundle import ModelBundle
from model_handlers.networks import error_to_score
from model_handlers.torch_model import LoadedModel, resolve_device

LOG = logging.getLogger(__name__)


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
