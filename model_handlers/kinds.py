"""Model handler kinds: ``model.handler`` names one; each kind is a settings class and a factory, nothing more.

Adding a kind: write its settings (a ``ModelSettings`` subclass with ``handler: Literal["<kind>"]``) and a factory
``(settings, version) -> ModelHandler``, and add one entry here. The config accepts the new kind and the pipeline
serves it, keyed by device, with no other edit.
"""
from __future__ import annotations

from pathlib import Path

from apache_beam.ml.inference.base import KeyedModelHandler

from model_handlers.device_groups import FleetVersions, fleet_versions
from model_handlers.http_endpoint import HttpEndpointSettings, http_endpoint_handler
from model_handlers.mlflow_handler import MlflowSettings, mlflow_handler
from model_handlers.model_version import ModelVersion
from model_handlers.serving import HandlerFactory, ServedVersions
from model_handlers.settings import ModelSettings
from model_handlers.torch_handler import TorchSettings, torch_handler
from model_handlers.transformers_handler import TransformersSettings, transformers_handler
from model_handlers.vertex_endpoint import VertexEndpointSettings, vertex_endpoint_handler
from model_handlers.version_router import keyed_router

HANDLERS: dict[type[ModelSettings], HandlerFactory] = {
    TorchSettings: torch_handler,
    MlflowSettings: mlflow_handler,
    TransformersSettings: transformers_handler,
    HttpEndpointSettings: http_endpoint_handler,
    VertexEndpointSettings: vertex_endpoint_handler,
}


def handler_factory(settings: ModelSettings) -> HandlerFactory:
    """The factory of ``settings``' kind; ValueError naming the field when none is registered."""
    try:
        return HANDLERS[type(settings)]
    except KeyError:
        raise ValueError(f"model.handler: no handler kind registered for {type(settings).__name__}") from None


def served_fleet(settings: ModelSettings, version: ModelVersion, tracking_uri: str | None = None,
                 cache_dir: str | Path | None = None) -> FleetVersions:
    """What a stream serves: ``version`` to the default group, each of ``settings.groups`` its own, by ``settings``'
    kind (each watching its alias when the settings say so and a registry is given)."""
    return fleet_versions(settings, version, handler_factory(settings), tracking_uri, cache_dir)


def keyed_handler(settings: ModelSettings, version: ModelVersion) -> KeyedModelHandler:
    """The handler of ``settings``' kind serving ``version`` alone, keyed by device id."""
    return keyed_router(ServedVersions(settings, version, handler_factory(settings)))
