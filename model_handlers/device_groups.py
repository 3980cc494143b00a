"""Per-device and per-line models: device groups (ids or glob patterns) mapped to their own model versions.

``model.groups`` names groups of devices, each with its own ``uri``; a device matching no group (groups are tried in
config order) is in the ``default`` group, served by ``model.uri``. Each group is served like a single-model stream
(``model_handlers.serving``: its own MLTransform artifacts, threshold and promotions), and RunInference routes
batches keyed by group with Beam's ``KeyedModelHandler`` over one ``KeyModelMapping`` per group, which loads at most
``model.max_models_per_worker_hint`` group models per worker. That mapping needs every key listed up front and raises
on any other, so batches are keyed by group name, never by device id, before inference.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apache_beam.ml.inference.base import KeyedModelHandler, KeyModelMapping

from features.scaling import ScalingArtifacts
from features.schema import FeatureBatch
from model_handlers.model_version import ModelVersion
from model_handlers.resolve import resolve_model_version
from model_handlers.serving import HandlerFactory, ServedVersions, spec_differences
from model_handlers.settings import DEFAULT_GROUP, ModelSettings
from model_handlers.version_router import VersionRouter, keyed_router

MAX_REMEMBERED_DEVICES = 200_000  # device -> group answers kept; beyond it the table starts again


@dataclasses.dataclass
class DeviceGroups:
    """Which group a device id belongs to: the first group with a matching id or glob pattern, else the default."""

    patterns: tuple[tuple[str, tuple[str, ...]], ...]
    _known: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def __call__(self, device_id: str) -> str:
        group = self._known.get(device_id)
        if group is None:
            group = next((name for name, patterns in self.patterns
                          if any(fnmatch.fnmatchcase(device_id, p) for p in patterns)), DEFAULT_GROUP)
            if len(self._known) >= MAX_REMEMBERED_DEVICES:
                self._known.clear()
            self._known[device_id] = group
        return group


@dataclasses.dataclass(frozen=True)
class FleetVersions:
    """What a stream serves, group by group: the scaling step's source (``current(device_id)``) and the key of
    each batch for RunInference (``keyed``)."""

    served: Mapping[str, ServedVersions]
    group_of: DeviceGroups
    max_models_per_worker_hint: int | None = None
    shadow: ServedVersions | None = None

    @property
    def default(self) -> ServedVersions:
        return self.served[DEFAULT_GROUP]

    def current(self, device_id: str | None = None) -> ScalingArtifacts:
        return self.served[DEFAULT_GROUP if device_id is None else self.group_of(device_id)].current()

    def keyed(self, element: tuple[str, FeatureBatch]) -> tuple[str, FeatureBatch]:
        """(device_id, batch) -> (its group, batch)."""
        return self.group_of(element[0]), element[1]

    def handler(self) -> KeyedModelHandler:
        """RunInference's handler over (group, FeatureBatch): one group, one model; several, one KeyModelMapping
        each (batched as the configured kind batches)."""
        if len(self.served) == 1:
            return keyed_router(self.default)
        mappings = [KeyModelMapping([group], VersionRouter(served)) for group, served in self.served.items()]
        return _GroupedHandler(mappings, self.max_models_per_worker_hint)


class _GroupedHandler(KeyedModelHandler):
    """Beam's multi-model KeyedModelHandler batches by element count, ignoring its models' batching (it logs a
    warning saying so at construction); ours batch feature rows, and every group's kind is the configured one, so
    its batching applies here, as that warning suggests."""

    def __init__(self, mappings: list[KeyModelMapping], max_models_per_worker_hint: int | None):
        super().__init__(mappings, max_models_per_worker_hint=max_models_per_worker_hint)
        self._batching = mappings[0].mh.batch_elements_kwargs()

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return self._batching


def fleet_versions(settings: ModelSettings, default: ModelVersion, factory: HandlerFactory,
                   tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> FleetVersions:
    """Each group's version resolved (the default group's is ``default``), and the shadow's if any; one whose
    version has another feature spec than the default's fails here, naming its field."""
    cache = None if cache_dir is None else str(cache_dir)

    def serve(field: str, uri: str) -> ServedVersions:
        version = resolve_model_version(uri, tracking_uri, Path(cache or "."), settings.vertex)
        differences = spec_differences(default.feature_spec, version.feature_spec)
        if differences:
            raise ValueError(f"{field}: {uri} has another feature spec than model.uri's ({'; '.join(differences)}); "
                             f"one stream computes one set of features")
        own = settings.model_copy(update={"uri": uri, "groups": {}, "shadow": None})
        return ServedVersions(own, version, factory, tracking_uri, cache)

    served = {DEFAULT_GROUP: ServedVersions(settings, default, factory, tracking_uri, cache)}
    served.update({name: serve(f"model.groups.{name}", group.uri) for name, group in settings.groups.items()})
    shadow = serve("model.shadow", settings.shadow) if settings.shadow else None
    patterns = tuple((name, group.devices) for name, group in settings.groups.items())
    return FleetVersions(served, DeviceGroups(patterns), settings.max_models_per_worker_hint, shadow)
