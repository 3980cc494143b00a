"""Model handler kinds: ``model.handler`` names one; each kind is a settings class and a factory, nothing more.

Adding a kind: write its settings (a ``ModelSettings`` subclass with ``handler: Literal["<kind>"]``) and a factory
``(settings, version) -> ModelHandler``, and add one entry here. The config accepts the new kind and the pipeline
serves it, keyed by device, with no other edit.
"""
from __future__ import annotations

from collections.abc import Callable

from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler

from model_handlers.mlflow_handler import MlflowSettings, mlflow_handler
from model_handlers.model_version import ModelVersion
from model_handlers.settings import ModelSettings
from model_handlers.torch_handler import TorchSettings, torch_handler

HandlerFactory = Callable[[ModelSettings, ModelVersion], ModelHandler]

HANDLERS: dict[type[ModelSettings], HandlerFactory] = {
    TorchSettings: torch_handler,
    MlflowSettings: mlflow_handler,
}


def keyed_handler(settings: ModelSettings, version: ModelVersion) -> KeyedModelHandler:
    """The handler of ``settings``' kind for ``version``, keyed by device id."""
    try:
        factory = HANDLERS[type(settings)]
    except KeyError:
        raise ValueError(f"model.handler: no handler kind registered for {type(settings).__name__}") from None
    return KeyedModelHandler(factory(settings, version))
