"""What every handler kind shares: FeatureBatches in, one model call over the rows of a whole RunInference batch, the
output cut back into one ``PredictionResult`` per batch (``score_batches``; remote kinds, whose ``run_inference`` is
Beam's ``RemoteModelHandler``'s, call it from ``request``), batching counted in feature rows. A local kind says only
how it scores rows (``score``), given each row's device and event time for kinds with a model per device."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from features.schema import FeatureBatch, feature_rows
from model_handlers.contract import ModelOutput, split_outputs


def row_devices(batch: Sequence[FeatureBatch]) -> tuple[np.ndarray, np.ndarray]:
    """The device id and event time of each row of the concatenated ``batch``."""
    ids = np.repeat(np.array([b.events.device_id for b in batch], dtype=object), [len(b) for b in batch])
    return ids, np.concatenate([b.events.ts for b in batch]) if batch else np.empty(0)


def score_batches(batch: Sequence[FeatureBatch], score: Callable[[np.ndarray], ModelOutput]) -> list[PredictionResult]:
    """One ``score`` call over the concatenated rows of ``batch``, cut back into one result per feature batch."""
    output = score(np.concatenate([b.features for b in batch]))
    model_id = str(output.model)
    return [PredictionResult(item, part, model_id)
            for item, part in zip(batch, split_outputs([len(b) for b in batch], output))]


class FeatureBatchHandler(ModelHandler[FeatureBatch, PredictionResult, Any]):
    """``score(features, model)`` -> the output contract for the concatenated rows; ``metrics_namespace``: Beam's
    metrics namespace of the kind."""

    metrics_namespace = "iotml"

    def __init__(self, min_batch_size: int, max_batch_size: int):
        super().__init__()
        self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def score(self, features: np.ndarray, model: Any, device_ids: np.ndarray | None = None,
              times: np.ndarray | None = None) -> ModelOutput:
        """The rows' scores; ``device_ids`` and ``times``: each row's device and event time (per-device models)."""
        raise NotImplementedError

    def run_inference(self, batch: Sequence[FeatureBatch], model: Any,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        device_ids, times = row_devices(batch)
        return score_batches(batch, lambda features: self.score(features, model, device_ids, times))

    def get_num_bytes(self, batch: Sequence[FeatureBatch]) -> int:
        return sum(b.features.nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return self.metrics_namespace

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {**self._batching, "element_size_fn": feature_rows}
