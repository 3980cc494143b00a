"""A model version: the folder a registered version holds, one unit of everything that must change together.

    model.json          feature spec, calibrated threshold, architecture (read by the handler kind), metrics,
                        name, version and ``transform_id`` (the fingerprint of transform/)
    model.safetensors   network weights (a state_dict; never a pickled Python object), for weight-based kinds
    transform/          the MLTransform artifacts fitted on this version's training features
    MLmodel             an MLflow pyfunc model over the same folder (``model_handlers.pyfunc``): scaled feature
                        rows in, raw and anomaly scores out, so ``mlflow models serve`` and any MLflow tool load it;
                        for the ``mlflow`` kind, the user's own MLflow model (any flavour) with its files
    manifest.json       the SHA-256 of every other file (``model_handlers.manifest``): a version is opened and
                        loaded only when its files match it, and its ``attributes.json`` is allow-listed

Nothing here imports a framework: remote handler kinds read a version without torch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from features.artifact_trust import trusted_attributes
from features.spec import FeatureSpec
from model_handlers.manifest import MANIFEST, UntrustedModelError, verify_manifest, write_manifest

META = "model.json"
WEIGHTS = "model.safetensors"
TRANSFORM = "transform"
PYFUNC_LOADER = "model_handlers.pyfunc"
MLFLOW_KIND = "mlflow"


def transform_fingerprint(transform_dir: Path) -> str:
    """A digest of the MLTransform artifacts (every file's relative path and bytes)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in transform_dir.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(transform_dir)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """A version on local disk, read-only; ``manifest_sha256`` is the digest of the manifest it was opened with."""

    path: Path
    meta: dict[str, Any]
    manifest_sha256: str | None = None

    @classmethod
    def open(cls, path: str | Path, manifest_sha256: str | None = None) -> ModelVersion:
        """The version in ``path``, verified: its files match its manifest, whose digest is ``manifest_sha256`` when
        given (the registry's), and its MLTransform attributes are allow-listed; else UntrustedModelError."""
        path = Path(path)
        if not (path / META).is_file():
            raise FileNotFoundError(f"{path} is not a model version: {META} is missing")
        digest = verify_manifest(path, manifest_sha256)
        trusted_attributes(path / TRANSFORM)
        return cls(path, json.loads((path / META).read_text()), digest)

    def verify(self) -> None:
        """Refuse (UntrustedModelError) if the folder changed since it was opened: run before loading from it."""
        verify_manifest(self.path, self.manifest_sha256)

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.model_validate(self.meta["feature_spec"])

    @property
    def threshold(self) -> float:
        """The raw-score threshold calibrated on held-out normal data (anomaly score 0.5)."""
        return float(self.meta["threshold"])

    @property
    def architecture(self) -> dict[str, Any]:
        return dict(self.meta["architecture"])

    @property
    def transform_dir(self) -> Path:
        return self.path / TRANSFORM

    @property
    def transform_id(self) -> str:
        return str(self.meta.get("transform_id") or transform_fingerprint(self.transform_dir))

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "local"))

    def with_identity(self, name: str, version: str) -> ModelVersion:
        """The same version labelled with the registry's name and version."""
        return dataclasses.replace(self, meta={**self.meta, "name": name, "version": version})


def download_version(target: Path, fetch: Callable[[Path], Path]) -> None:
    """A version's files into ``target``, whole or not at all: ``fetch(folder)`` downloads them into a new folder
    beside ``target`` and returns the version's folder within it, which is renamed to ``target``, so worker
    processes resolving the same version at once never open a half-written folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        folder = fetch(partial)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        with contextlib.suppress(OSError):  # another process renamed its copy first: theirs is as good
            folder.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def version_files(manifest: bytes) -> list[str]:
    """The files a manifest lists, refused if any would land outside the version's folder."""
    files = list(json.loads(manifest)["files"])
    for relative in files:
        path = PurePosixPath(relative)
        if path.is_absolute() or ".." in path.parts:
            raise UntrustedModelError(f"{MANIFEST} lists {relative!r}, outside the version's folder; refused")
    return files


def upload_version_files(version: ModelVersion, bucket: Any, prefix: str, **upload: Any) -> None:
    """Copy ``version``'s files under ``prefix`` of a Cloud Storage ``bucket`` (google-cloud-storage): those its
    manifest lists, then the manifest, so a copy that has a manifest is whole; ``upload``: ``upload_from_filename``
    options (a timeout)."""
    manifest = (version.path / MANIFEST).read_bytes()
    for relative in [*version_files(manifest), MANIFEST]:
        bucket.blob(f"{prefix}/{relative}").upload_from_filename(str(version.path / relative), **upload)


def write_model_version(path: Path, spec: FeatureSpec, architecture: dict[str, Any], threshold: float,
                        metrics: dict[str, float], name: str) -> ModelVersion:
    """Write model.json, the MLmodel file and, last, the manifest into ``path``, which already holds the weights
    and transform/. An ``architecture`` of kind ``mlflow`` (``model_handlers.mlflow_handler``) is a folder that
    already is an MLflow model (``mlflow.<flavour>.save_model(..., path)``, with a signature): its MLmodel is kept."""
    if not (path / TRANSFORM).is_dir():
        raise FileNotFoundError(f"{path / TRANSFORM} is missing: fit the MLTransform artifacts first")
    own_model = architecture.get("kind") == MLFLOW_KIND
    if own_model and not (path / "MLmodel").is_file():
        raise FileNotFoundError(f"{path / 'MLmodel'} is missing: save the MLflow model into {path} first")
    meta = {
        "architecture": architecture,
        "feature_spec": spec.model_dump(mode="json"),
        "threshold": threshold,
        "metrics": metrics,
        "name": name,
        "transform_id": transform_fingerprint(path / TRANSFORM),
    }
    (path / META).write_text(json.dumps(meta, indent=2))
    if not own_model:
        _write_mlmodel(path, spec)
    return ModelVersion(path, meta, write_manifest(path))


def _write_mlmodel(path: Path, spec: FeatureSpec) -> None:
    """The MLflow pyfunc flavour over this folder, with a signature named from the feature spec."""
    from mlflow.models import Model, ModelSignature
    from mlflow.pyfunc import add_to_model
    from mlflow.types import ColSpec, Schema

    from model_handlers.pyfunc import CONTRIBUTION, TRANSFORM_ID

    signature = ModelSignature(
        inputs=Schema([ColSpec("float", name) for name in spec.feature_names]),
        outputs=Schema([ColSpec("double", "raw_score"), ColSpec("double", "anomaly_score"),
                        *(ColSpec("double", CONTRIBUTION + name) for name in spec.channels),
                        ColSpec("string", TRANSFORM_ID)]))
    model = Model(signature=signature)
    add_to_model(model, loader_module=PYFUNC_LOADER, data=".")
    model.save(str(path / "MLmodel"))
