"""The model versions a running stream serves, and promotions picked up without a restart.

A stream starts on the version its ``model.uri`` resolves to. When that URI is a registry alias
(``models:/<name>@<alias>``) and ``model.watch_s`` is set, each worker process looks at the alias every ``watch_s``
seconds, in a background thread. When it has moved, the version it names is downloaded, verified against its
manifest, checked against the running graph's feature spec and loaded by the configured handler kind; only then does it
become current. From that moment the scaling step scales each new batch with the new version's MLTransform artifacts
and tags the batch with the version (``FeatureBatch.scaled_for``), and ``VersionRouter`` scores every batch with the
version that scaled it: weights, artifacts and threshold switch together, and batches the old version scaled (still
gathering in RunInference's batching) are scored by the old version. Nothing is lost or scored twice. A version that
fails a check is refused: the stream keeps serving the current one and logs why, once per refused version.

Why not Beam's model update (``RunInference(model_metadata_pcoll=...)``): it swaps only the model inside
RunInference, while a version's MLTransform graph runs in the step before and must switch with it, batch for batch;
and on the local runner a never-ending side input is never materialised, so a live stream reading one would never
start (shared Beam notes). This mechanism runs unchanged on Dataflow, where each worker process watches the registry.

The running graph's window step keeps the feature spec it was built with, so a promoted version must have the same
sensors, derived readings, window and statistics (checked). Its fill values and gap, fitted on its own training data,
take effect at the next restart.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apache_beam.ml.inference.base import ModelHandler

from features.scaling import ScalingArtifacts
from features.spec import FeatureSpec
from model_handlers.model_version import ModelVersion
from model_handlers.resolve import is_registry_uri, parse_model_uri, pinned_uri, registry_version, resolve_model_version
from model_handlers.settings import ModelSettings

LOG = logging.getLogger(__name__)

MAX_LOADED = 3  # versions kept loaded per worker process: the current one and the latest it replaced
STRUCTURE = ("sensors", "derived", "window", "stats", "lags")  # what the running graph's window step was built for

HandlerFactory = Callable[[ModelSettings, ModelVersion], ModelHandler]


def version_tag(version: ModelVersion) -> str:
    """``<name>/<version>``: how a version is named in batches, logs and predictions."""
    return f"{version.name}/{version.version}"


def spec_differences(running: FeatureSpec, candidate: FeatureSpec) -> list[str]:
    """What in ``candidate`` the running graph could not compute: its sensors, derived readings, window or stats."""
    return [f"{field} {getattr(candidate, field)!r} (running: {getattr(running, field)!r})"
            for field in STRUCTURE if getattr(candidate, field) != getattr(running, field)]


@dataclasses.dataclass(frozen=True)
class ServedVersions:
    """What a stream serves: ``first`` (resolved at start) and, when ``settings.uri`` is an alias and
    ``settings.watch_s`` is set, whatever version the alias moves to and passes the checks. Picklable: the scaling
    step and RunInference each carry a copy, and in one worker process both copies share one watcher (``token``).
    ``factory`` builds the configured kind's handler for a version."""

    settings: ModelSettings
    first: ModelVersion
    factory: HandlerFactory
    tracking_uri: str | None = None
    cache_dir: str | None = None
    token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def watching(self) -> bool:
        uri, vertex = self.settings.uri, self.settings.vertex
        registry = bool(self.tracking_uri) if uri.startswith("models:/") else vertex is not None
        return bool(self.settings.watch_s) and is_registry_uri(uri) and "@" in uri and registry

    def current(self, device_id: str | None = None) -> ScalingArtifacts:
        """The current version's MLTransform artifacts, tagged with the version (the scaling step's source; every
        device's)."""
        return _watcher(self).artifacts

    def loaded(self, tag: str) -> tuple[ModelHandler, Any]:
        """The handler and loaded model of the version tagged ``tag`` (loaded now if it is not)."""
        return _watcher(self).loaded(tag)

    def check_promotion(self) -> ModelVersion:
        """Look at the alias once (the watcher's thread does this every ``watch_s``); the version served after."""
        return _watcher(self).check()


def _artifacts(version: ModelVersion) -> ScalingArtifacts:
    return ScalingArtifacts(str(version.transform_dir), version.transform_id, version_tag(version))


class _Watcher:
    """One per ServedVersions per process: the versions known, those loaded, the current one, the refused ones."""

    def __init__(self, served: ServedVersions):
        self._served = served
        self._lock = threading.Lock()
        self._versions = {version_tag(served.first): served.first}
        self._loaded: OrderedDict[str, tuple[ModelHandler, Any]] = OrderedDict()
        self._refused: set[str] = set()
        self._current = served.first
        self.artifacts = _artifacts(served.first)
        if served.watching:
            threading.Thread(target=self._watch, name=f"watch-{served.settings.uri}", daemon=True).start()

    def loaded(self, tag: str) -> tuple[ModelHandler, Any]:
        with self._lock:
            found = self._loaded.get(tag)
            if found is not None:
                self._loaded.move_to_end(tag)
                return found
            version = self._versions[tag]
        found = self._load(version)
        with self._lock:
            self._keep(tag, found)
        return found

    def _load(self, version: ModelVersion) -> tuple[ModelHandler, Any]:
        version.verify()
        handler = self._served.factory(self._served.settings, version)
        return handler, handler.load_model()

    def _keep(self, tag: str, loaded: tuple[ModelHandler, Any]) -> None:
        self._loaded[tag] = loaded
        current = version_tag(self._current)
        while len(self._loaded) > MAX_LOADED:
            del self._loaded[next(old for old in self._loaded if old != current)]

    def _watch(self) -> None:
        while True:
            time.sleep(self._served.settings.watch_s)
            try:
                self.check()
            except Exception as exc:  # the registry unreachable, say: keep serving, look again next time
                LOG.warning("could not check %s for a promotion (still serving %s): %s", self._served.settings.uri,
                            version_tag(self._current), exc)

    def check(self) -> ModelVersion:
        served = self._served
        uri = served.settings.uri
        name, alias, _ = parse_model_uri(uri)
        number = registry_version(uri, served.tracking_uri, served.settings.vertex)
        tag, serving = f"{name}/{number}", version_tag(self._current)
        if number == self._current.version or tag in self._refused:  # a Vertex model named by id is labelled by name
            return self._current
        try:
            version = resolve_model_version(pinned_uri(uri, number), served.tracking_uri, Path(served.cache_dir),
                                            served.settings.vertex)
            differences = spec_differences(served.first.feature_spec, version.feature_spec)
            if differences:
                raise ValueError(f"its feature spec differs from the running graph's: {'; '.join(differences)}")
            loaded = self._load(version)
        except Exception as exc:  # any failure to open, verify or load refuses the version, whatever raised it
            self._refused.add(tag)
            LOG.error("refused %s (%s@%s moved to it): %s; still serving %s", tag, name, alias, exc, serving)
            return self._current
        with self._lock:
            self._versions[tag] = version
            self._current = version
            self._keep(tag, loaded)
            self.artifacts = _artifacts(version)
        LOG.info("now serving %s (%s@%s moved from %s)", tag, name, alias, serving)
        return version


_WATCHERS: dict[str, _Watcher] = {}
_WATCHERS_LOCK = threading.Lock()


def _watcher(served: ServedVersions) -> _Watcher:
    found = _WATCHERS.get(served.token)
    if found is None:
        with _WATCHERS_LOCK:
            found = _WATCHERS.get(served.token)
            if found is None:
                found = _WATCHERS[served.token] = _Watcher(served)
    return found
