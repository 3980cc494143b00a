"""Resolve a registry reference to a local model version: MLflow's (models:/<name>@<alias>, models:/<name>/<version>)
here, Vertex AI's (vertex:<model>@<alias>, vertex:<model>/<version id>) in ``model_handlers.vertex``."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from model_handlers.manifest import MANIFEST_TAG, UntrustedModelError
from model_handlers.model_version import ModelVersion, download_version
from model_handlers.vertex import (VertexProject, is_vertex_uri, parse_vertex_uri, resolve_vertex_version,
                                   vertex_registry_version)


def is_registry_uri(uri: str) -> bool:
    return uri.startswith("models:/") or is_vertex_uri(uri)


def pinned_uri(uri: str, version: str) -> str:
    """The reference to ``version`` of the model ``uri`` refers to, in the same registry."""
    name, _, _ = parse_model_uri(uri)
    return f"vertex:{name}/{version}" if is_vertex_uri(uri) else f"models:/{name}/{version}"


def _vertex(uri: str, vertex: VertexProject | None) -> VertexProject:
    if vertex is None:
        raise ValueError(f"model.vertex: {uri} is a Vertex AI reference; set model.vertex (project, location)")
    return vertex


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) from a models:/ or vertex: URI."""
    if is_vertex_uri(uri):
        return parse_vertex_uri(uri)
    ref = uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, alias, None
    name, version = ref.split("/", 1)
    return name, None, version


def without_credentials(uri: str) -> str:
    """A URI fit for a message: any user and password removed (``postgresql://u:p@host/db`` -> ``postgresql://host/db``)."""
    parts = urlsplit(uri)
    if not parts.password and not parts.username:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def _registry_version(uri: str, tracking_uri: str):
    """The registry's entry for a models:/ reference; LookupError naming it when there is none."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, alias, version = parse_model_uri(uri)
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        where = without_credentials(tracking_uri)
        detail = exc.message.replace(tracking_uri, where)
        raise LookupError(f"model.uri: {uri} not found in the registry at {where}: {detail}") from None


def _download(source: str, tracking_uri: str, target: Path) -> None:
    """The registered version's artifacts into ``target`` (``download_version``: whole or not at all)."""
    import mlflow

    def fetch(partial: Path) -> Path:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(partial))
        found = list(partial.iterdir())
        return found[0] if len(found) == 1 and found[0].is_dir() else partial

    download_version(target, fetch)


def registry_version(uri: str, tracking_uri: str, vertex: VertexProject | None = None) -> str:
    """The version number a registry reference names now (one registry query, nothing downloaded)."""
    if is_vertex_uri(uri):
        return vertex_registry_version(uri, _vertex(uri, vertex))
    return str(_registry_version(uri, tracking_uri).version)


def resolve_model_version(uri: str, tracking_uri: str, cache_dir: Path,
                          vertex: VertexProject | None = None) -> ModelVersion:
    """Download (once) the version a registry reference points at and open it verified against the manifest digest
    the registry recorded for it; a version folder is opened verified against its own manifest."""
    if is_vertex_uri(uri):
        return resolve_vertex_version(uri, _vertex(uri, vertex), cache_dir)
    if not uri.startswith("models:/"):
        return ModelVersion.open(uri)
    name, _, _ = parse_model_uri(uri)
    found = _registry_version(uri, tracking_uri)
    expected = found.tags.get(MANIFEST_TAG)
    if not expected:
        raise UntrustedModelError(f"model.uri: {uri} is version {found.version}, which the registry holds no "
                                  f"{MANIFEST_TAG} tag for, so its files cannot be checked; refused (register it "
                                  f"with iotml train)")
    target = cache_dir / name / str(found.version)
    if not (target / "model.json").is_file():
        _download(found.source, tracking_uri, target)
    return ModelVersion.open(target, expected).with_identity(name, str(found.version))
