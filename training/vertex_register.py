"""Registered versions on Vertex AI: uploaded to its Model Registry, their MLflow aliases mirrored, deployed.

``upload_version`` stages a verified version's files (what its manifest lists: weights, MLTransform artifacts,
``model.json`` with the threshold, ``MLmodel``; and ``manifest.json``) to ``staging_bucket`` with google-cloud-storage,
then uploads them as a new version of the Vertex model of that display name (the first upload creates the model,
later ones name it ``parentModel``) with the serving container of ``VertexServing``: the image
``mlflow models build-docker -m models:/<name>/<version> -n <image>`` builds, serving that version's pyfunc at
``/invocations`` on port 8080 (health ``/ping``). The version's labels identify it: ``mlflow_model``,
``mlflow_version``, ``transform_id``, and the manifest's SHA-256 in ``manifest_sha256_1`` and ``manifest_sha256_2``
(labels are kept per version and filterable, and a digest does not fit one label value: ``model_handlers.vertex``),
against which ``resolve_vertex_version`` verifies a download. Uploading an MLflow version already there returns the
existing Vertex version (the aliases given added), or refuses if its files differ.

Vertex version ids count uploads, not MLflow versions: refer to versions through aliases (mirrored from MLflow by
``mirror_aliases``) or the labels. A model's first version is its ``default`` (what a bare model id names); later
uploads leave ``default`` where it is.

Checked against the local stand-in of the Vertex AI REST and Cloud Storage JSON APIs driven by the real clients
(``tests/vertex_stand_in.py``): the staged files and the request bodies. Only a real project can check IAM, quotas,
the service's own label, alias and machine rules, and the serving container on real machines.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any


from model_handlers.manifest import verify_manifest
from model_handlers.model_version import ModelVersion, upload_version_files
from model_handlers.vertex import (DEFAULT_ALIAS, MLFLOW_NAME_LABEL, MLFLOW_VERSION_LABEL, TRANSFORM_LABEL,
                                   VertexProject, check_alias, credentials_of, digest_labels, find_model,
                                   init_aiplatform, is_vertex_uri, recorded_digest, vertex_model_version)
from training.register import list_versions
from training.settings import VertexServing

_LABEL_VALUE_LENGTH = 63


@dataclasses.dataclass(frozen=True)
class VertexVersion:
    """One version of a Vertex AI model; ``uri`` refers to it as ``model.uri`` does."""

    display_name: str
    model_id: str
    version_id: str
    resource_name: str
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"vertex:{self.model_id}/{self.version_id}"


@dataclasses.dataclass(frozen=True)
class VertexDeployment:
    """A version deployed on an endpoint, and the endpoint's traffic split (deployed model id -> percent) after."""

    endpoint_resource_name: str
    endpoint_id: str
    deployed_model_id: str
    traffic_split: dict[str, int]


def label_value(text: str) -> str:
    """``text`` as a label value: lowercase, characters other than letters, digits, ``_`` and ``-`` as ``-``,
    at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:_LABEL_VALUE_LENGTH]


def _mirrored_alias(alias: str) -> str:
    if alias == DEFAULT_ALIAS:
        raise ValueError(f"version alias {alias!r} is Vertex AI's own (the version a bare model id names): "
                         f"rename the MLflow alias")
    return check_alias(alias)


def version_labels(version: ModelVersion, manifest_sha256: str) -> dict[str, str]:
    """The labels identifying an uploaded version: its MLflow name and version, transform and manifest digest."""
    return {MLFLOW_NAME_LABEL: label_value(version.name), MLFLOW_VERSION_LABEL: label_value(version.version),
            TRANSFORM_LABEL: label_value(version.transform_id), **digest_labels(manifest_sha256)}


def _as_version(model: Any) -> VertexVersion:
    """A VertexVersion from an aiplatform Model or a Model resource (``aiplatform.gapic.Model``)."""
    resource = getattr(model, "gca_resource", model)
    name = resource.name.split("@", 1)[0]
    return VertexVersion(resource.display_name, name.rsplit("/", 1)[-1], str(resource.version_id), name,
                         tuple(sorted(alias for alias in resource.version_aliases if alias != DEFAULT_ALIAS)))


def _versions(parent: Any, labels: Mapping[str, str] | None = None) -> list[Any]:
    """Every version of ``parent`` (with its labels: ``ModelRegistry.list_versions`` drops them), or those with
    ``labels``. GET .../models/<id>:listVersions."""
    terms = " AND ".join(f'labels.{key}="{value}"' for key, value in (labels or {}).items())
    pages = parent.api_client.list_model_versions(request={"name": parent.resource_name, "filter": terms})
    return sorted(pages, key=lambda version: int(version.version_id))


def _merge_aliases(parent: Any, version_id: str, changes: Sequence[str]) -> None:
    """Add (``alias``) or remove (``-alias``) aliases of one version; an added alias leaves the version holding it.
    POST .../models/<id>@<version>:mergeVersionAliases."""
    if changes:
        parent.api_client.merge_version_aliases(name=f"{parent.resource_name}@{version_id}",
                                                version_aliases=list(changes))


def _identity(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels naming the MLflow version (its name and number)."""
    return {key: labels[key] for key in (MLFLOW_NAME_LABEL, MLFLOW_VERSION_LABEL)}


def _uploaded(parent: Any, labels: Mapping[str, str], version: ModelVersion) -> Any | None:
    """The Vertex version already holding this MLflow version, or None; ValueError if its files differ."""
    found = _versions(parent, _identity(labels))
    for existing in found:
        if recorded_digest(existing.labels) != recorded_digest(labels):
            raise ValueError(f"{version.name} v{version.version} is already Vertex AI version {existing.version_id} "
                             f"of {parent.resource_name} with other files (another manifest digest): refused")
    return found[0] if found else None


def _stage(version: ModelVersion, manifest_sha256: str, project: VertexProject) -> str:
    """Upload the version's files to ``<staging_bucket>/iotml-models/<name>/<version>-<digest>/`` (one POST
    /upload/storage/v1/b/<bucket>/o each); its gs:// folder. (aiplatform's own staging of a local folder globs it,
    which skips dot-files such as tf.Transform's ``.tft_metadata/schema.pbtxt``: the version would arrive
    incomplete.)"""
    from google.cloud import storage

    bucket, _, folder = str(project.staging_bucket).removeprefix("gs://").partition("/")
    prefix = "/".join(part for part in (folder.strip("/"), "iotml-models", label_value(version.name),
                                        f"{version.version}-{manifest_sha256[:16]}") if part)
    staging = storage.Client(project=project.project, credentials=credentials_of(project)).bucket(bucket)
    upload_version_files(version, staging, prefix)
    return f"gs://{bucket}/{prefix}"


def _upload(version: ModelVersion, artifact_uri: str, display_name: str, parent: Any, labels: dict[str, str],
            aliases: list[str], serving: VertexServing) -> Any:
    """POST .../models:upload (then GET its operation until done, and GET the new version)."""
    from google.cloud import aiplatform

    return aiplatform.Model.upload(
        display_name=display_name, artifact_uri=artifact_uri,
        parent_model=parent.resource_name if parent else None, is_default_version=parent is None,
        version_aliases=aliases or None, version_description=f"MLflow {version.name} v{version.version}",
        serving_container_image_uri=serving.image_uri, serving_container_predict_route=serving.predict_route,
        serving_container_health_route=serving.health_route, serving_container_ports=[serving.port],
        serving_container_environment_variables=dict(serving.env) or None, labels=labels)


def upload_version(version: ModelVersion, project: VertexProject, serving: VertexServing,
                   aliases: Sequence[str] = (), display_name: str | None = None) -> VertexVersion:
    """Upload a registered version (verified first) as a version of the Vertex model ``display_name`` (default: its
    MLflow name) with ``aliases`` (which leave any other version holding them); an MLflow version uploaded before is
    not uploaded again: the existing Vertex version is returned, ``aliases`` added."""
    wanted = [_mirrored_alias(alias) for alias in dict.fromkeys(aliases)]
    if not version.version.isdigit():
        raise ValueError(f"{version.path} is not a registered version (version {version.version!r}): upload the "
                         f"version resolved from models:/<name>/<version>")
    if not project.staging_bucket:
        raise ValueError("staging_bucket: required to upload (gs://<bucket>[/<folder>], in the project's region)")
    digest = verify_manifest(version.path, version.manifest_sha256)
    labels = version_labels(version, digest)
    init_aiplatform(project)
    name = display_name or version.name
    parent = find_model(name)
    existing = _uploaded(parent, labels, version) if parent else None
    if existing is None:
        artifact_uri = _stage(version, digest, project)
        return _as_version(_upload(version, artifact_uri, name, parent, labels, wanted, serving))
    _merge_aliases(parent, existing.version_id, [alias for alias in wanted if alias not in existing.version_aliases])
    return _as_version(_versions(parent, _identity(labels))[0])


def _alias_targets(aliases_by_mlflow_version: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """alias -> the MLflow version holding it; ValueError if one alias is given to two versions."""
    targets: dict[str, str] = {}
    for mlflow_version, aliases in aliases_by_mlflow_version.items():
        for alias in aliases:
            if targets.setdefault(_mirrored_alias(alias), str(mlflow_version)) != str(mlflow_version):
                raise ValueError(f"alias {alias!r} is given to MLflow versions {targets[alias]} and {mlflow_version}")
    return targets


def _alias_changes(versions: list[Any], targets: Mapping[str, str]) -> dict[str, list[str]]:
    """Vertex version id -> the alias changes making every version hold exactly its MLflow version's aliases."""
    by_mlflow = {version.labels.get(MLFLOW_VERSION_LABEL): version for version in versions}
    missing = sorted({mlflow for mlflow in targets.values() if label_value(mlflow) not in by_mlflow})
    if missing:
        raise LookupError(f"MLflow versions {', '.join(missing)} hold aliases but are not uploaded to Vertex AI: "
                          f"upload them first")
    changes: dict[str, list[str]] = {}
    for alias, mlflow in targets.items():
        holder = by_mlflow[label_value(mlflow)]
        if alias not in holder.version_aliases:
            changes.setdefault(holder.version_id, []).append(alias)
    for version in versions:
        stale = [alias for alias in version.version_aliases if alias != DEFAULT_ALIAS and alias not in targets]
        changes.setdefault(version.version_id, []).extend(f"-{alias}" for alias in stale)
    return changes


def mirror_aliases(display_name: str, aliases_by_mlflow_version: Mapping[str, Sequence[str]],
                   project: VertexProject) -> list[VertexVersion]:
    """Move the version aliases of the Vertex model ``display_name`` so that each version (found by its
    ``mlflow_version`` label) holds exactly the aliases its MLflow version holds (``mlflow_aliases``), ``default``
    aside; LookupError, before any change, if an MLflow version holding an alias is not uploaded. The versions after."""
    targets = _alias_targets(aliases_by_mlflow_version)
    init_aiplatform(project)
    parent = find_model(display_name)
    if parent is None:
        raise LookupError(f"no Vertex AI model named {display_name!r} in project {project.project}, "
                          f"{project.location}")
    for version_id, changes in _alias_changes(_versions(parent), targets).items():
        _merge_aliases(parent, version_id, changes)
    return [_as_version(version) for version in _versions(parent)]


def mlflow_aliases(tracking_uri: str, name: str) -> dict[str, tuple[str, ...]]:
    """MLflow version -> its aliases, for every version of the registered model ``name``."""
    return {info.version: info.aliases for info in list_versions(tracking_uri, name)}


def _check_deployment(endpoint: str | None, endpoint_display_name: str | None, machine_type: str,
                      accelerator_type: str | None, accelerator_count: int, min_replicas: int, max_replicas: int,
                      traffic_percentage: int) -> None:
    """ValueError naming the first deployment option out of range."""
    from google.cloud.aiplatform import gapic

    problems = [
        ((endpoint is None) == (endpoint_display_name is None), "endpoint / endpoint_display_name: give exactly one"),
        (not machine_type, "machine_type: required"),
        (bool(accelerator_type) != (accelerator_count > 0),
         f"accelerator_count: must be > 0 exactly when accelerator_type is given (got {accelerator_count} with "
         f"accelerator_type {accelerator_type!r})"),
        (bool(accelerator_type) and accelerator_type not in gapic.AcceleratorType.__members__,
         f"accelerator_type: unknown {accelerator_type!r} (e.g. NVIDIA_TESLA_T4, NVIDIA_L4)"),
        (min_replicas < 1, f"min_replicas: must be >= 1, got {min_replicas}"),
        (max_replicas < min_replicas, f"max_replicas: must be >= min_replicas ({min_replicas}), got {max_replicas}"),
        (not 1 <= traffic_percentage <= 100, f"traffic_percentage: must be 1..100, got {traffic_percentage}"),
    ]
    for failed, message in problems:
        if failed:
            raise ValueError(message)


def _endpoint(endpoint: str | None, display_name: str | None) -> Any:
    """The endpoint by id or resource name (GET .../endpoints/<id>), or by display name (GET .../endpoints with a
    filter), created when none has it (POST .../endpoints)."""
    from google.api_core import exceptions
    from google.cloud import aiplatform

    if endpoint is not None:
        try:
            return aiplatform.Endpoint(endpoint)
        except exceptions.NotFound as exc:
            raise LookupError(f"endpoint {endpoint!r} not found: {exc.message}") from None
    found = aiplatform.Endpoint.list(filter=f'display_name="{display_name}"')
    if len(found) > 1:
        raise LookupError(f"{len(found)} endpoints are named {display_name!r}: give endpoint (its id) instead")
    return found[0] if found else aiplatform.Endpoint.create(display_name=display_name)


def _model_version(model: str | VertexVersion, project: VertexProject) -> Any:
    from google.cloud import aiplatform

    if isinstance(model, VertexVersion):
        return aiplatform.Model(model.resource_name, version=model.version_id)
    if not is_vertex_uri(model):
        raise ValueError(f"{model!r}: expected a vertex: reference or a VertexVersion")
    return vertex_model_version(model, project)


def deploy_version(model: str | VertexVersion, project: VertexProject, *, endpoint: str | None = None,
                   endpoint_display_name: str | None = None, machine_type: str = "n1-standard-4",
                   accelerator_type: str | None = None, accelerator_count: int = 0, min_replicas: int = 1,
                   max_replicas: int = 1, traffic_percentage: int = 100,
                   deployed_display_name: str | None = None) -> VertexDeployment:
    """Deploy a version (a ``vertex:`` reference or an uploaded VertexVersion) on an existing ``endpoint`` (id or
    resource name) or on the endpoint ``endpoint_display_name`` (created when there is none). Below 100 %, it is a
    canary: the endpoint's current deployed models keep the rest of the traffic, in their proportions; at 100 % they
    stay deployed with none. POST .../endpoints/<id>:deployModel, then GET the endpoint."""
    _check_deployment(endpoint, endpoint_display_name, machine_type, accelerator_type, accelerator_count,
                      min_replicas, max_replicas, traffic_percentage)
    init_aiplatform(project)
    version = _model_version(model, project)
    target = _endpoint(endpoint, endpoint_display_name)
    before = {deployed.id for deployed in target.list_models()}
    if traffic_percentage < 100 and not before:
        raise ValueError(f"traffic_percentage: {traffic_percentage} % is a canary, but endpoint "
                         f"{target.resource_name} serves nothing yet for it to be beside: deploy at 100 first")
    target.deploy(version, deployed_model_display_name=deployed_display_name or
                  f"{version.display_name}-v{version.version_id}", traffic_percentage=traffic_percentage,
                  machine_type=machine_type, accelerator_type=accelerator_type,
                  accelerator_count=accelerator_count or None, min_replica_count=min_replicas,
                  max_replica_count=max_replicas)
    [deployed_id] = {deployed.id for deployed in target.list_models()} - before
    return VertexDeployment(target.resource_name, target.name, deployed_id, dict(target.traffic_split))
