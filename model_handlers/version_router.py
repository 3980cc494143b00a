"""The handler RunInference runs: each feature batch scored by the model version that scaled it.

Beam's handlers serve one model at a time (and swap it whole on a model update); a stream that promotes a version
holds batches scaled by the old version and by the new one in the same RunInference batch for a moment, and each must
meet its own version's weights and threshold. This handler groups a batch's items by ``FeatureBatch.scaled_for`` and
hands each group to that version's handler of the configured kind (``model_handlers.serving``), keeping the order.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult

from features.schema import FeatureBatch
from model_handlers.serving import ServedVersions, version_tag


class VersionRouter(ModelHandler[FeatureBatch, PredictionResult, ServedVersions]):
    """Scores FeatureBatches with the served version each names; batching and metrics are the configured kind's.
    The kind's handler for the first version is built here, so a kind's start-time checks fail at construction."""

    def __init__(self, served: ServedVersions):
        super().__init__()
        self._served = served
        self._first = served.factory(served.settings, served.first)
        self._first_tag = version_tag(served.first)

    def load_model(self) -> ServedVersions:
        self._served.loaded(self._served.current().owner or self._first_tag)
        return self._served

    def run_inference(self, batch: Sequence[FeatureBatch], model: ServedVersions,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(item.scaled_for or self._first_tag, []).append(i)
        results: list[PredictionResult | None] = [None] * len(batch)
        for tag, indices in groups.items():
            handler, loaded = model.loaded(tag)
            for i, result in zip(indices, handler.run_inference([batch[i] for i in indices], loaded, inference_args)):
                results[i] = result
        return results

    def get_num_bytes(self, batch: Sequence[FeatureBatch]) -> int:
        return self._first.get_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return self._first.get_metrics_namespace()

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return self._first.batch_elements_kwargs()


def keyed_router(served: ServedVersions) -> KeyedModelHandler:
    """RunInference's handler for one set of served versions, whatever the elements are keyed by."""
    return KeyedModelHandler(VersionRouter(served))
