"""Vertex AI as a model registry: the project settings, and ``vertex:`` references resolved to local model versions.

A Vertex AI model version uploaded by ``training.vertex_register`` holds one model version folder
(``model_handlers.model_version``) at its ``artifactUri`` in Cloud Storage, and the SHA-256 of that folder's manifest
in two of the version's own labels (``manifest_sha256_1`` and ``manifest_sha256_2``, 32 hex digits each: a label
value holds at most 63 characters). Labels are kept per version by the registry, as MLflow keeps the
``manifest_sha256`` tag, and only registry writers can change them. ``resolve_vertex_version`` downloads the folder
and opens it verified against that digest, so files changed in the bucket (manifest included) are refused: the
Vertex registry is the trust anchor of a ``vertex:`` reference, as the MLflow registry is of a ``models:/`` one.

References: ``vertex:<model>@<alias>`` and ``vertex:<model>/<version id>``, ``<model>`` a display name (which must
name one model of the project and location, and hold no ``/``, ``@`` or ``"``) or a numeric model id (a display
name of digits only is read as an id).

Verified here against a local stand-in of the Vertex AI REST and Cloud Storage JSON APIs driven by the real clients
(``tests/vertex_stand_in.py``): the requests sent, the download and the verification. Only a real project can verify
IAM, quotas, the service's own filter, label and alias rules, and regional or private API hosts.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from model_handlers.manifest import UntrustedModelError
from model_handlers.model_version import META, ModelVersion, download_version

SCHEME = "vertex:"
DEFAULT_ALIAS = "default"
MLFLOW_NAME_LABEL = "mlflow_model"
MLFLOW_VERSION_LABEL = "mlflow_version"
TRANSFORM_LABEL = "transform_id"
DIGEST_LABELS = ("manifest_sha256_1", "manifest_sha256_2")
_CLOUD_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Vertex AI's rule for a version alias (google.cloud.aiplatform_v1.types.Model.version_aliases).
_ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]")
_URI = re.compile(r"vertex:(?P<model>[^@/\"\\]+)(?:@(?P<alias>[^@/]+)|/(?P<version>[0-9]+))")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_LOOPBACK = re.compile(r"http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?/?")


class VertexProject(BaseModel):
    """``project``: the Google Cloud project; ``location``: its Vertex AI region; ``staging_bucket``: where uploads
    stage a version's files (``gs://bucket[/folder]``, required to upload); ``api_endpoint``: another API host (a
    regional or Private Service Connect host, or a local stand-in as ``http://127.0.0.1:PORT``, spoken to over REST);
    ``credentials``: ``default`` (Application Default Credentials) or ``anonymous`` (a local stand-in only: it needs
    an ``http://`` loopback ``api_endpoint``); ``network``: the VPC network of private endpoints
    (``projects/<number>/global/networks/<name>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str
    location: str = "us-central1"
    staging_bucket: str | None = None
    api_endpoint: str | None = None
    credentials: Literal["default", "anonymous"] = "default"
    network: str | None = None

    @field_validator("staging_bucket")
    @classmethod
    def _gs(cls, bucket: str | None) -> str | None:
        if bucket is not None and not re.fullmatch(r"gs://[^/]+(/.*)?", bucket):
            raise ValueError(f"expected gs://<bucket>[/<folder>], got {bucket!r}")
        return bucket

    @model_validator(mode="after")
    def _plain_http_is_local(self) -> VertexProject:
        local = self.api_endpoint is not None and _LOOPBACK.fullmatch(self.api_endpoint) is not None
        if self.credentials == "anonymous" and not local:
            raise ValueError("credentials: anonymous is for a local stand-in only: set api_endpoint to "
                             "http://127.0.0.1:PORT")
        if (self.api_endpoint or "").startswith("http://") and self.credentials != "anonymous":
            raise ValueError("api_endpoint: an http:// host would receive the credentials unencrypted: use it for a "
                             "local stand-in with credentials: anonymous")
        return self


def credentials_of(project: VertexProject) -> Any:
    """The credentials ``project`` names: anonymous, or Application Default Credentials (loaded now)."""
    if project.credentials == "anonymous":
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import google.auth

    return google.auth.default(scopes=list(_CLOUD_SCOPES))[0]


def init_aiplatform(project: VertexProject) -> None:
    """Point the aiplatform client at ``project`` (process-wide, as ``aiplatform.init`` does); REST transport when
    ``api_endpoint`` is given. Credentials and host are always set, so no earlier init's survive."""
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    if project.api_endpoint is None:
        initializer.global_config._api_endpoint = None  # aiplatform.init sets a host but never unsets one
    aiplatform.init(project=project.project, location=project.location, staging_bucket=project.staging_bucket,
                    api_endpoint=project.api_endpoint, api_transport="rest" if project.api_endpoint else "grpc",
                    credentials=credentials_of(project), network=project.network or "")


def check_alias(alias: str) -> str:
    """``alias`` if Vertex AI accepts it as a version alias (a lowercase letter, then letters, digits and ``-``,
    ending in a lowercase letter or digit, 2-128 characters); ValueError naming it otherwise."""
    if not _ALIAS.fullmatch(alias):
        raise ValueError(f"version alias {alias!r} is not valid on Vertex AI: it must start with a lowercase letter, "
                         f"hold only letters, digits and '-', end with a lowercase letter or digit, 2-128 characters")
    return alias


def is_vertex_uri(uri: str) -> bool:
    return uri.startswith(SCHEME)


def parse_vertex_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(model display name or id, alias, version id) of a ``vertex:`` reference; ValueError if malformed."""
    match = _URI.fullmatch(uri)
    if match is None:
        raise ValueError(f"{uri!r} is not a Vertex AI model reference: expected vertex:<model display name or id>"
                         f"@<alias> or vertex:<model display name or id>/<version id>")
    if match["alias"] is not None:
        check_alias(match["alias"])
    return match["model"], match["alias"], match["version"]


def digest_labels(manifest_sha256: str) -> dict[str, str]:
    """The labels recording a manifest digest (two halves: a label value holds at most 63 characters)."""
    if not _HEX64.fullmatch(manifest_sha256):
        raise ValueError(f"not a SHA-256 hex digest: {manifest_sha256!r}")
    return {DIGEST_LABELS[0]: manifest_sha256[:32], DIGEST_LABELS[1]: manifest_sha256[32:]}


def recorded_digest(labels: Mapping[str, str]) -> str | None:
    """The manifest digest ``labels`` record, or None when they record none (or a malformed one)."""
    digest = "".join(labels.get(key, "") for key in DIGEST_LABELS)
    return digest if _HEX64.fullmatch(digest) else None


def find_model(display_name: str) -> Any:
    """The aiplatform Model (its default version) of that display name, or None; LookupError if several."""
    from google.cloud import aiplatform

    if '"' in display_name or "\\" in display_name:
        raise ValueError(f"model display name {display_name!r}: quotes and backslashes are not supported")
    found = aiplatform.Model.list(filter=f'display_name="{display_name}"')
    if len(found) > 1:
        raise LookupError(f"{len(found)} Vertex AI models are named {display_name!r} (ids "
                          f"{', '.join(model.name for model in found)}): refer to one as vertex:<id>")
    return found[0] if found else None


def vertex_model_version(uri: str, project: VertexProject) -> Any:
    """The aiplatform Model of the version a ``vertex:`` reference names now; LookupError naming the reference when
    the model, alias or version does not exist."""
    from google.api_core import exceptions
    from google.cloud import aiplatform

    model, alias, version = parse_vertex_uri(uri)
    init_aiplatform(project)
    where = f"in project {project.project}, {project.location}"
    if not model.isdigit():
        found = find_model(model)
        if found is None:
            raise LookupError(f"model.uri: {uri} not found: no Vertex AI model named {model!r} {where}")
        model = found.name
    try:
        return aiplatform.Model(f"{model}@{alias or version}")
    except exceptions.NotFound as exc:
        raise LookupError(f"model.uri: {uri} not found {where}: {exc.message}") from None


def vertex_registry_version(uri: str, project: VertexProject) -> str:
    """The version id a ``vertex:`` reference names now (one lookup, two for a display name; nothing downloaded)."""
    return str(vertex_model_version(uri, project).version_id)


def _split_gs(uri: str) -> tuple[str, str]:
    """(bucket, folder prefix ending in ``/``) of ``gs://bucket/folder``."""
    if not uri.startswith("gs://"):
        raise UntrustedModelError(f"artifact URI {uri!r} is not in Cloud Storage (gs://); refused")
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    return bucket, prefix.rstrip("/") + "/" if prefix.strip("/") else ""


def _relative(name: str, prefix: str, uri: str) -> PurePosixPath | None:
    """An object's path inside the version folder (None for a folder marker); refused if it leaves the folder."""
    relative = name[len(prefix):]
    if not relative or relative.endswith("/"):
        return None
    path = PurePosixPath(relative)
    if path.is_absolute() or any(part in ("", ".", "..") for part in relative.split("/")):
        raise UntrustedModelError(f"{uri}: object {name!r} would be written outside the version folder; refused")
    return path


def _download(artifact_uri: str, target: Path, project: VertexProject) -> None:
    """Every object under ``artifact_uri`` into ``target`` (``download_version``: whole or not at all)."""
    from google.cloud import storage

    bucket, prefix = _split_gs(artifact_uri)
    client = storage.Client(project=project.project, credentials=credentials_of(project))

    def fetch(partial: Path) -> Path:
        for blob in client.list_blobs(bucket, prefix=prefix):
            relative = _relative(blob.name, prefix, artifact_uri)
            if relative is not None:
                (partial / relative).parent.mkdir(parents=True, exist_ok=True)
                blob.download_to_filename(str(partial / relative))
        return partial

    download_version(target, fetch)


def resolve_vertex_version(uri: str, project: VertexProject, cache_dir: Path) -> ModelVersion:
    """Download (once) the version a ``vertex:`` reference names into
    ``cache_dir/vertex/<project>/<location>/<model id>/<version id>`` and open it verified against the manifest digest
    recorded in the version's labels at upload; UntrustedModelError when none is recorded or the files differ."""
    found = vertex_model_version(uri, project)
    expected = recorded_digest(found.labels)
    if expected is None:
        raise UntrustedModelError(f"model.uri: {uri} is Vertex AI version {found.version_id} of model {found.name}, "
                                  f"whose labels record no manifest digest ({', '.join(DIGEST_LABELS)}), so its "
                                  f"files cannot be checked; refused (upload it with training.vertex_register)")
    target = cache_dir / "vertex" / project.project / project.location / found.name / str(found.version_id)
    if not (target / META).is_file():
        _download(found.uri, target, project)
    return ModelVersion.open(target, expected).with_identity(found.display_name, str(found.version_id))
