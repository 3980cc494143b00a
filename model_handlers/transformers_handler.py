"""``model.handler: transformers``: a version's Hugging Face ``transformers`` time-series model (PatchTST, trained
from scratch: ``model_handlers.forecaster``), in process on CPU or CUDA (decided on the worker at load).

Beam's ``HuggingFaceModelHandlerTensor`` calls a model on dicts of tensors and returns its raw outputs per example;
our elements are feature batches whose lagged columns the forecaster turns into windows, and the result must be the
model output contract (the forecast error scored at the version's threshold, each sensor's share of it). So this kind
keeps the torch kind's batching and scoring and differs in what it loads: the transformer, with ``from_pretrained``
from the version's own folder.
"""
from __future__ import annotations

from typing import Literal

from model_handlers.forecaster import KIND
from model_handlers.model_version import ModelVersion
from model_handlers.torch_handler import TorchAnomalyHandler, TorchSettings


class TransformersSettings(TorchSettings):
    """As the torch kind's: ``device``, ``min/max_batch_size`` (feature rows per forward pass), ``cpu_threads``."""

    handler: Literal["transformers"] = "transformers"


class TransformersHandler(TorchAnomalyHandler):
    """Scores FeatureBatches with a version's forecaster: one forward pass per RunInference batch."""

    metrics_namespace = "iotml_transformers"


def transformers_handler(settings: TransformersSettings, version: ModelVersion) -> TransformersHandler:
    kind = version.architecture.get("kind")
    if kind != KIND:
        raise ValueError(f"model.handler is 'transformers' but {version.path} holds a {kind!r} model (transformers "
                         f"serves {KIND!r}); set model.handler to the kind that serves it")
    return TransformersHandler(version, settings.device, settings.min_batch_size, settings.max_batch_size,
                               settings.cpu_threads)
