"""A model version for workers that cannot see the launcher's disk (Dataflow): copied to Cloud Storage once
(``stage_version``: every file its manifest lists, the manifest last), checked there before a launch
(``staged_digest``), and pickled into the job as a reference to that copy (``StagedVersion``).

Every step of the graph that serves a version (scaling, each handler kind) reads ``version.path``. A
``StagedVersion`` unpickled where that folder is missing or holds another manifest (a worker) downloads the copy
into the worker's temporary folder, whole or not at all, and opens it verified against the manifest digest the
registry recorded: a copy changed in the bucket is refused there, as a changed registry download is.
"""
from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path
from typing import Any

from model_handlers.manifest import MANIFEST, UntrustedModelError
from model_handlers.model_version import META, ModelVersion, download_version, upload_version_files, version_files

TRANSFER_TIMEOUT_S = 120.0
WORKER_MODELS = "iotml-models"


def staged_uri(root: str, version: ModelVersion) -> str:
    """``<root>/<name>/<version>``: where ``version`` is staged under ``root`` (``gs://bucket/path``)."""
    return f"{root.rstrip('/')}/{version.name}/{version.version}"


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name.strip("/")


def stage_version(version: ModelVersion, root: str, client: Any) -> str:
    """Upload ``version``'s files under ``staged_uri(root, version)`` with ``client`` (google-cloud-storage), the
    manifest last, so a copy with a manifest is whole; returns the URI."""
    target = staged_uri(root, version)
    bucket_name, prefix = split_gcs(target)
    upload_version_files(version, client.bucket(bucket_name), prefix, timeout=TRANSFER_TIMEOUT_S)
    return target


def staged_digest(uri: str, client: Any, timeout: float, retry: Any = None) -> str | None:
    """The SHA-256 of the manifest staged at ``uri``; None when there is none."""
    from google.api_core.exceptions import NotFound

    bucket_name, prefix = split_gcs(uri)
    try:
        raw = client.bucket(bucket_name).blob(f"{prefix}/{MANIFEST}").download_as_bytes(timeout=timeout,
                                                                                          retry=retry)
    except NotFound:
        return None
    return hashlib.sha256(raw).hexdigest()


@dataclasses.dataclass(frozen=True)
class StagedVersion(ModelVersion):
    """A version whose ``staged`` copy travels with the job in its place: see the module's docstring."""

    staged: str = ""

    def __reduce__(self) -> tuple[Any, tuple[str, str, str | None, dict[str, Any]]]:
        return _unpickled, (str(self.path), self.staged, self.manifest_sha256, self.meta)


def staged(version: ModelVersion, root: str) -> StagedVersion:
    """``version`` (opened verified) as a reference to its copy under ``root``."""
    if not version.manifest_sha256:
        raise UntrustedModelError(f"model version {version.path} was opened without its manifest; refused")
    return StagedVersion(version.path, version.meta, version.manifest_sha256, staged_uri(root, version))


def _holds(folder: Path, digest: str | None) -> bool:
    manifest = folder / MANIFEST
    return (folder / META).is_file() and manifest.is_file() and (
        hashlib.sha256(manifest.read_bytes()).hexdigest() == digest)


def _unpickled(path: str, uri: str, digest: str | None, meta: dict[str, Any]) -> StagedVersion:
    """The version where this process can read it: its folder if that holds it (the launcher), else the worker's
    copy, downloaded the first time and verified."""
    folder = Path(path)
    if not _holds(folder, digest):
        folder = Path(tempfile.gettempdir()) / WORKER_MODELS / f"{split_gcs(uri)[1]}-{(digest or '')[:16]}"
        if not _holds(folder, digest):
            download_version(folder, lambda partial: _download(uri, digest, partial))
        ModelVersion.open(folder, digest)
    return StagedVersion(folder, meta, digest, uri)


def _download(uri: str, digest: str | None, partial: Path) -> Path:
    """The copy at ``uri`` into ``partial``, its manifest checked against ``digest`` before any other file."""
    from google.cloud import storage

    bucket_name, prefix = split_gcs(uri)
    bucket = storage.Client().bucket(bucket_name)
    manifest = bucket.blob(f"{prefix}/{MANIFEST}").download_as_bytes(timeout=TRANSFER_TIMEOUT_S)
    if hashlib.sha256(manifest).hexdigest() != digest:
        raise UntrustedModelError(f"the model version staged at {uri} is not the one the job was launched with "
                                  f"(its manifest differs); refused")
    for relative in version_files(manifest):
        target = partial / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        bucket.blob(f"{prefix}/{relative}").download_to_filename(str(target), timeout=TRANSFER_TIMEOUT_S)
    (partial / MANIFEST).write_bytes(manifest)
    return partial
