"""Resolve a registry reference (models:/<name>@<alias> or models:/<name>/<version>) to a local model version."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from model_handlers.manifest import MANIFEST_TAG, UntrustedModelError
from model_handlers.model_version import ModelVersion


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) from a models:/ URI."""
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


def resolve_model_version(uri: str, tracking_uri: str, cache_dir: Path) -> ModelVersion:
    """Download (once) the version a registry reference points at and open it verified against the manifest digest
    the registry recorded for it; a version folder is opened verified against its own manifest."""
    if not uri.startswith("models:/"):
        return ModelVersion.open(uri)
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, alias, version = parse_model_uri(uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        where = without_credentials(tracking_uri)
        detail = exc.message.replace(tracking_uri, where)
        raise LookupError(f"model.uri: {uri} not found in the registry at {where}: {detail}") from None
    expected = found.tags.get(MANIFEST_TAG)
    if not expected:
        raise UntrustedModelError(f"model.uri: {uri} is version {found.version}, which the registry holds no "
                                  f"{MANIFEST_TAG} tag for, so its files cannot be checked; refused (register it "
                                  f"with iotml train)")
    target = cache_dir / name / str(found.version)
    if not (target / "model.json").is_file():
        target.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.artifacts.download_artifacts(artifact_uri=found.source, dst_path=str(target))
        downloaded = [p for p in target.iterdir()]
        if len(downloaded) == 1 and downloaded[0].is_dir() and not (target / "model.json").exists():
            for item in downloaded[0].iterdir():
                item.rename(target / item.name)
            downloaded[0].rmdir()
    return ModelVersion.open(target, expected).with_identity(name, str(found.version))
