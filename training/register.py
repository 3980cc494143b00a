"""MLflow tracking and Model Registry: each training run registers a new version; ``champion`` moves only on merit."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
from mlflow import MlflowClient

from model_handlers.manifest import MANIFEST_TAG, verify_manifest

CHAMPION = "champion"
BUNDLE_ARTIFACT = "bundle"


@dataclasses.dataclass(frozen=True)
class Registration:
    name: str
    version: str
    run_id: str
    promoted: bool
    champion_version: str
    reason: str


def is_server(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` names an HTTP tracking server (rather than a database or folder this process opens)."""
    return urlsplit(tracking_uri).scheme in ("http", "https")


@contextlib.contextmanager
def _one_quick_try(timeout_s: int) -> Iterator[None]:
    """MLflow's HTTP requests without retries and with a short timeout (its defaults retry for minutes)."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(zip(names, ("0", str(timeout_s))))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_tracking_server(tracking_uri: str, timeout_s: int = 10) -> None:
    """Fail before any training when an HTTP tracking server does not answer: ConnectionError naming its host
    (never the URI, which may carry a password) and the first line of the failure."""
    parts = urlsplit(tracking_uri)
    if not is_server(tracking_uri):
        return
    try:
        with _one_quick_try(timeout_s):
            MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow wraps connection, TLS and HTTP errors differently: all mean "unusable"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if parts.password:
            first_line = first_line.replace(parts.password, "***")
        first_line = first_line[:600]
        where = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        raise ConnectionError(f"MLflow tracking server at {where} is not usable: {first_line}") from None


def experiment_id(tracking_uri: str, experiment: str, artifact_root: Path) -> str:
    """The experiment's id, creating it with artifacts under ``artifact_root`` (not the current directory); on a
    tracking server where the server chooses (``mlflow-artifacts:`` when it proxies them: runs upload through it)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    if is_server(tracking_uri):
        return client.create_experiment(experiment)
    artifact_root.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(experiment, artifact_location=artifact_root.resolve().as_uri())


def _alias_version(client: MlflowClient, name: str, alias: str):
    """The version ``alias`` names (None when it names none)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def champion_metric(client: MlflowClient, name: str, metric: str) -> tuple[str | None, float | None]:
    """The current champion's version and its evaluation metric (None when there is no champion)."""
    version = _alias_version(client, name, CHAMPION)
    if version is None:
        return None, None
    run = client.get_run(version.run_id)
    return str(version.version), run.data.metrics.get(metric)


def register_run(tracking_uri: str, experiment: str, artifact_root: Path, model_name: str, bundle_dir: Path,
                 params: dict, metrics: dict[str, float], plots: list[Path], eval_metric: str,
                 promote: bool = False) -> Registration:
    """Log a run (params, metrics, plots, bundle), register the bundle as a new version tagged with its manifest's
    digest (the bundle is verified against its manifest first), maybe move the alias."""
    manifest_sha256 = verify_manifest(bundle_dir)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id(tracking_uri, experiment, artifact_root)) as run:
        mlflow.log_params({key: str(value)[:500] for key, value in params.items()})
        mlflow.log_metrics(metrics)
        for plot in plots:
            mlflow.log_artifact(str(plot), artifact_path="plots")
        mlflow.log_artifacts(str(bundle_dir), artifact_path=BUNDLE_ARTIFACT)
        source = f"{run.info.artifact_uri}/{BUNDLE_ARTIFACT}"
    try:
        client.get_registered_model(model_name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(model_name, description="Window-feature autoencoder for sensor anomalies")
    version = client.create_model_version(model_name, source=source, run_id=run.info.run_id,
                                          tags={MANIFEST_TAG: manifest_sha256})
    client.set_model_version_tag(model_name, version.version, eval_metric, str(metrics.get(eval_metric)))
    current, current_value = champion_metric(client, model_name, eval_metric)
    new_value = metrics.get(eval_metric)
    if promote:
        moved, reason = True, "promoted on request (--promote)"
    elif current is None:
        moved, reason = True, "first version: no champion yet"
    elif current_value is None or (new_value is not None and new_value > current_value):
        moved, reason = True, f"{eval_metric} {new_value:.4f} beats champion v{current} ({current_value})"
    else:
        moved, reason = False, f"{eval_metric} {new_value:.4f} does not beat champion v{current} ({current_value:.4f})"
    if moved:
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
    return Registration(model_name, str(version.version), run.info.run_id, moved,
                        str(version.version) if moved else str(current), reason)


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """A registered version as ``iotml models`` shows it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    created: float
    run_id: str | None
    source: str
    metrics: dict[str, float]
    tags: dict[str, str]


def _client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _info(client: MlflowClient, found) -> VersionInfo:
    metrics = client.get_run(found.run_id).data.metrics if found.run_id else {}
    return VersionInfo(found.name, str(found.version), tuple(sorted(found.aliases or ())),
                       found.creation_timestamp / 1000, found.run_id, found.source, dict(metrics), dict(found.tags))


def list_versions(tracking_uri: str, name: str | None = None) -> list[VersionInfo]:
    """Every registered version (of ``name``, or of every model), newest last, with its aliases and run metrics.
    (A version from a search carries no aliases in MLflow: each is read whole.)"""
    client = _client(tracking_uri)
    found = client.search_model_versions(f"name = '{name}'" if name else None)
    whole = (client.get_model_version(v.name, v.version) for v in found)
    return sorted((_info(client, v) for v in whole), key=lambda v: (v.name, int(v.version)))


def show_version(tracking_uri: str, name: str, version: str | None = None) -> VersionInfo:
    """One version (default: the champion); LookupError naming it when the registry has none."""
    client = _client(tracking_uri)
    try:
        found = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name,
                                                                                                        CHAMPION)
    except mlflow.exceptions.MlflowException as exc:
        raise LookupError(f"{name} {'v' + version if version else '@' + CHAMPION} is not registered: "
                          f"{exc.message}") from None
    return _info(client, found)


def promote_version(tracking_uri: str, name: str, version: str, alias: str = CHAMPION) -> str | None:
    """Move ``alias`` to ``version`` (which must exist and carry its manifest digest); the version it named before.
    A stream serving ``models:/<name>@<alias>`` picks the move up (``model_handlers.serving``)."""
    target = show_version(tracking_uri, name, version)
    if MANIFEST_TAG not in target.tags:
        raise LookupError(f"{name} v{version} has no {MANIFEST_TAG} tag: a stream would refuse it")
    client = _client(tracking_uri)
    previous = _alias_version(client, name, alias)
    client.set_registered_model_alias(name, alias, version)
    return None if previous is None else str(previous.version)
