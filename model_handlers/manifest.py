"""A model version's manifest: the SHA-256 of every file in its folder, written with the version and checked before
anything in it is loaded (weights, the MLTransform artifacts, whose ``attributes.json`` jsonpickle would execute, and
their TensorFlow SavedModel).

Why our own: MLflow 3 neither records a digest of a model's artifacts nor verifies what it downloads (its artifact
stores and model registry hold no checksums), and OpenSSF's ``model-signing`` signs such manifests with keys or
Sigstore identities this project does not manage. The trust anchor here is the registry: the manifest's own digest is
a tag of the registered version (``MANIFEST_TAG``), so files and manifest rewritten together in the artifact store
are refused too. A version folder given by path is only as trusted as the disk it is on.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from features.artifact_trust import UntrustedArtifactError

MANIFEST = "manifest.json"
MANIFEST_TAG = "manifest_sha256"
# MLflow writes this (model name and version, safe YAML, read by nothing else) into a models:/ download, and into a
# local artifact store's own folder: it is no part of the version.
MLFLOW_DOWNLOAD_META = "registered_model_meta"
_UNLISTED = frozenset({MANIFEST, MLFLOW_DOWNLOAD_META})
_ALGORITHM = "sha256"


class UntrustedModelError(UntrustedArtifactError):
    """A model version whose files are not those its manifest (and the registry) recorded: never loaded."""


def _file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, _ALGORITHM).hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its relative POSIX path, but for the manifest and MLflow's download note; links
    and special files are refused (a version holds plain files only)."""
    files = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise UntrustedModelError(f"model version {folder}: {relative} is not a plain file or folder; refused")
            if name in names and relative not in _UNLISTED:
                files[relative] = path
    return files


def write_manifest(folder: Path) -> str:
    """Record the digest of every file of ``folder`` in its manifest; returns the manifest's own digest."""
    digests = {relative: _file_sha256(path) for relative, path in sorted(_files(folder).items())}
    text = json.dumps({"algorithm": _ALGORITHM, "files": digests}, indent=2).encode()
    (folder / MANIFEST).write_bytes(text)
    return hashlib.sha256(text).hexdigest()


def _recorded(folder: Path, raw: bytes) -> dict[str, str]:
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        valid = manifest["algorithm"] == _ALGORITHM and all(isinstance(v, str) for v in files.values())
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise UntrustedModelError(f"model version {folder}: {MANIFEST} is not a manifest this project writes; refused")
    return files


def verify_manifest(folder: Path, expected_sha256: str | None = None) -> str:
    """Refuse ``folder`` (UntrustedModelError naming the file) unless its manifest is there, has ``expected_sha256``
    as its digest when given (the registry's), and lists exactly its files with their digests. Returns the digest."""
    if not (folder / MANIFEST).is_file():
        raise UntrustedModelError(f"model version {folder}: {MANIFEST} is missing, so nothing in it can be checked; "
                                  f"refused (versions written by training record one)")
    raw = (folder / MANIFEST).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise UntrustedModelError(f"model version {folder}: {MANIFEST} has sha256 {digest}, but {expected_sha256} "
                                  f"was recorded for it ({MANIFEST_TAG}); refused")
    recorded, present = _recorded(folder, raw), _files(folder)
    for relative in sorted(recorded.keys() | present.keys()):
        if relative not in present:
            problem = "is missing"
        elif relative not in recorded:
            problem = "is not in its manifest (an added file could be loaded too)"
        elif _file_sha256(present[relative]) != recorded[relative]:
            problem = "does not match its manifest (changed after the version was written)"
        else:
            continue
        raise UntrustedModelError(f"model version {folder}: {relative} {problem}; refused")
    return digest
