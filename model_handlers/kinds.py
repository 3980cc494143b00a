"""Model handler kinds: ``model.handler`` names one; each kind is a settings class and a factory, nothing more.

Adding a kind: write its settings (a ``ModelSettings`` subclass with ``handler: Literal["<kind>"]``) and a factory
``(settings, version) -> ModelHandler``, and add one entry here. The config accepts the new kind and the pipeline
serves it, keyed by device, with no other edit.
"""
from __future__ import annotations

from pathlib import Path

from apache_beam.ml.inference.base import KeyedModelHandler

from model_handlers.mlflow_handler import MlflowSettings, mlflow_handler
from model_handlers.model_version import ModelVersion
from model_handlers.serving import HandlerFactory, ServedVersions
from model_handlers.settings import ModelSettings
from model_handlers.torch_handler import TorchSettings, torch_handler
from model_handlers.version_router import VersionRouter

HANDLERS: dict[type[ModelSettings], HandlerFactory] = {
    TorchSettings: torch_handler,
    MlflowSettings: mlflow_handler,
}


def served_versions(settings: ModelSettings, version: ModelVersion, tracking_uri: str | None = None,
                    cache_dir: str | Path | None = None) -> ServedVersions:
    """What a stream serves, starting with ``version``, by ``settings``' kind (watching an alias when the settings
    say so and a registry is given)."""
    try:
        factory = HANDLERS[type(settings)]
    except KeyError:
        raise ValueError(f"model.handler: no handler kind registered for {type(settings).__name__}") from None
    return ServedVersions(settings, version, factory, tracking_uri, None if cache_dir is None else str(cache_dir))


def keyed_handler(settings: ModelSettings, version: ModelVersion | ServedVersions) -> KeyedModelHandler:
    """The handler RunInference runs, keyed by device id: each batch scored by its version, by ``settings``' kind
    (a single version when given one)."""
    served = version if isinstance(version, ServedVersions) else served_versions(settings, version)
    return KeyedModelHandler(VersionRouter(served))
