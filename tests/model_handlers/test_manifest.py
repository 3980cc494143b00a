"""A model version is trusted only when verified: every file matches the SHA-256 manifest written with it, the
manifest's digest is the one the registry recorded, and its MLTransform attributes are allow-listed; anything else is
refused with a one-line error naming the file and the version, before anything is loaded."""
import json
import shutil

import mlflow
import pytest
from mlflow import MlflowClient

from features.artifact_trust import ATTRIBUTES
from inference_pipeline.cli import main
from model_handlers.manifest import (
    MANIFEST,
    MANIFEST_TAG,
    MLFLOW_DOWNLOAD_META,
    UntrustedModelError,
    write_manifest,
)
from model_handlers.model_version import TRANSFORM, WEIGHTS, ModelVersion
from model_handlers.resolve import resolve_model_version
from model_handlers.torch_handler import TorchAnomalyHandler
from training.register import register_run


@pytest.fixture
def version_dir(trained, tmp_path):
    """A copy of the trained version, free to tamper with."""
    return shutil.copytree(trained.version.path, tmp_path / "version")


def _one_file(folder, pattern):
    return next(path for path in sorted(folder.rglob(pattern)) if path.is_file())


def _refused(path, named, expected=None):
    with pytest.raises(UntrustedModelError) as refused:
        ModelVersion.open(path, expected)
    message = str(refused.value)
    assert named in message and str(path) in message and "\n" not in message
    return message


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_a_written_version_opens_verified_and_its_manifest_lists_every_file(trained, version_dir):
    manifest = json.loads((version_dir / MANIFEST).read_text())
    files = {path.relative_to(version_dir).as_posix() for path in version_dir.rglob("*") if path.is_file()}
    assert set(manifest["files"]) == files - {MANIFEST, MLFLOW_DOWNLOAD_META}
    assert {WEIGHTS, "model.json", "MLmodel", f"{TRANSFORM}/{ATTRIBUTES}"} <= set(manifest["files"])
    version = ModelVersion.open(version_dir, trained.version.manifest_sha256)
    assert version.manifest_sha256 == trained.version.manifest_sha256
    assert TorchAnomalyHandler(version, device="cpu").load_model().model_id.name == trained.version.name


def test_a_changed_weight_file_is_refused_at_open_and_at_load(version_dir):
    opened = ModelVersion.open(version_dir)
    _flip_last_byte(version_dir / WEIGHTS)
    _refused(version_dir, f"{WEIGHTS} does not match its manifest")
    with pytest.raises(UntrustedModelError, match=WEIGHTS):
        TorchAnomalyHandler(opened, device="cpu").load_model()


def test_a_changed_transform_file_is_refused(version_dir):
    saved_model = _one_file(version_dir / TRANSFORM, "transform_fn/saved_model.pb")
    _flip_last_byte(saved_model)
    _refused(version_dir, f"{saved_model.relative_to(version_dir).as_posix()} does not match its manifest")


def test_an_added_file_is_refused(version_dir):
    assets = _one_file(version_dir / TRANSFORM, "transform_fn/saved_model.pb").parent / "assets"
    assets.mkdir(exist_ok=True)
    (assets / "vocabulary.txt").write_text("anything a loader might pick up\n")
    _refused(version_dir, "vocabulary.txt is not in its manifest")


def test_a_missing_file_or_manifest_is_refused(version_dir):
    (version_dir / "MLmodel").unlink()
    _refused(version_dir, "MLmodel is missing")
    (version_dir / MANIFEST).unlink()
    _refused(version_dir, f"{MANIFEST} is missing")


def test_files_and_manifest_rewritten_together_are_caught_by_the_recorded_digest(version_dir):
    recorded = ModelVersion.open(version_dir).manifest_sha256
    meta = json.loads((version_dir / "model.json").read_text())
    (version_dir / "model.json").write_text(json.dumps({**meta, "threshold": 1e9}))
    write_manifest(version_dir)
    assert ModelVersion.open(version_dir).threshold == 1e9
    _refused(version_dir, MANIFEST_TAG, expected=recorded)


def test_an_attributes_payload_under_a_rewritten_manifest_is_refused_unrun(version_dir, tmp_path):
    marker = tmp_path / "payload_ran"
    attributes_file = version_dir / TRANSFORM / ATTRIBUTES
    attributes = json.loads(attributes_file.read_text())
    attributes[0]["transforms"][0]["name"] = {
        "py/reduce": [{"py/function": "builtins.open"}, {"py/tuple": [str(marker), "w"]}]}
    attributes_file.write_text(json.dumps(attributes))
    write_manifest(version_dir)
    with pytest.raises(ValueError, match=f"{attributes_file}: .*'py/reduce'"):
        ModelVersion.open(version_dir)
    assert not marker.exists()


@pytest.fixture
def registry(tmp_path):
    """A local MLflow store (sqlite + file artifacts) in tmp_path; the global MLflow URIs are restored after."""
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def test_the_registry_records_the_manifest_digest_and_resolve_checks_it(version_dir, registry, tmp_path):
    registered = register_run(registry, "trust", tmp_path / "mlartifacts", "trusted", version_dir, {},
                              {"eval_f1": 1.0}, [], "eval_f1")
    tag = MlflowClient(registry, registry).get_model_version("trusted", registered.version).tags[MANIFEST_TAG]
    resolved = resolve_model_version("models:/trusted@champion", registry, tmp_path / "cache")
    assert resolved.manifest_sha256 == tag == ModelVersion.open(version_dir).manifest_sha256

    stored = _one_file(tmp_path / "mlartifacts", WEIGHTS).parent
    _flip_last_byte(stored / WEIGHTS)
    write_manifest(stored)
    with pytest.raises(UntrustedModelError) as refused:
        resolve_model_version("models:/trusted/1", registry, tmp_path / "fresh_cache")
    message = str(refused.value)
    assert MANIFEST_TAG in message and str(tmp_path / "fresh_cache" / "trusted" / "1") in message
    assert "sqlite" not in message and "\n" not in message


def test_a_registered_version_without_a_manifest_tag_is_refused(version_dir, registry, tmp_path):
    register_run(registry, "trust", tmp_path / "mlartifacts", "trusted", version_dir, {}, {"eval_f1": 1.0}, [],
                 "eval_f1")
    client = MlflowClient(registry, registry)
    client.delete_model_version_tag("trusted", "1", MANIFEST_TAG)
    with pytest.raises(UntrustedModelError, match=f"no {MANIFEST_TAG} tag"):
        resolve_model_version("models:/trusted/1", registry, tmp_path / "cache")


def test_the_cli_reports_an_untrusted_version_as_a_one_line_error(version_dir, tmp_path, capsys):
    _flip_last_byte(version_dir / WEIGHTS)
    assert main(["stream", "--work-dir", str(tmp_path / "work"), "--set", f"model.uri={version_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{WEIGHTS} does not match its manifest" in err and str(version_dir) in err
