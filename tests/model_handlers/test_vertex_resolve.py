"""``vertex:`` references resolve to verified model versions, downloaded from the local Vertex AI / Cloud Storage
stand-in (``tests/vertex_stand_in.py``) through the real clients; changed files are refused."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from google.cloud import aiplatform

from model_handlers.manifest import MANIFEST, UntrustedModelError
from model_handlers.model_version import ModelVersion
from model_handlers.vertex import (VertexProject, is_vertex_uri, parse_vertex_uri, resolve_vertex_version,
                                   vertex_registry_version)
from tests.registry_versions import variant
from tests.vertex_stand_in import StoredObject, VertexStandIn
from training.settings import VertexServing
from training.vertex_register import VertexVersion, mirror_aliases, upload_version

BUCKET = "gs://stage-bucket"
SERVING = VertexServing(image_uri="europe-docker.pkg.dev/test-project/serving/iot-anomaly:1")


@pytest.fixture
def uploaded(trained, project, tmp_path) -> tuple[ModelVersion, ModelVersion, VertexVersion]:
    """MLflow v1 (champion) and a v2 with another threshold, both on Vertex; the VertexVersion of v2."""
    first = trained.version
    second = variant(first, tmp_path / "v2", threshold=first.threshold * 1.5).with_identity(first.name, "2")
    upload_version(first, project, SERVING, aliases=["champion"])
    return first, second, upload_version(second, project, SERVING, aliases=["challenger"])


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def downloads(stand_in: VertexStandIn) -> int:
    return sum(r.query.get("alt") == "media" for r in stand_in.requests_to("", "GET"))


def test_alias_and_version_references_resolve_to_the_uploaded_files(stand_in, project, uploaded, tmp_path):
    first, second, vertex_second = uploaded
    cache = tmp_path / "cache"

    champion = resolve_vertex_version("vertex:iot-anomaly@champion", project, cache)
    assert champion.path == cache / "vertex" / "test-project" / "us-central1" / "1001" / "1"
    assert files_of(champion.path) == files_of(first.path)
    assert (champion.name, champion.version) == ("iot-anomaly", "1")
    assert champion.transform_id == first.transform_id
    assert champion.manifest_sha256 == first.manifest_sha256 and champion.threshold == first.threshold

    challenger = resolve_vertex_version(f"vertex:1001/{vertex_second.version_id}", project, cache)
    assert files_of(challenger.path) == files_of(second.path)
    assert (challenger.version, challenger.threshold) == ("2", second.threshold)
    assert challenger.manifest_sha256 == second.manifest_sha256

    fetched = downloads(stand_in)
    assert resolve_vertex_version("vertex:iot-anomaly@challenger", project, cache).path == challenger.path
    assert downloads(stand_in) == fetched, "a version is downloaded once"
    assert not [p for p in champion.path.parent.iterdir() if p.name.startswith(".")], "no partial download left"


def test_registry_version_follows_the_alias(stand_in, project, uploaded):
    assert vertex_registry_version("vertex:iot-anomaly@champion", project) == "1"
    assert vertex_registry_version("vertex:1001@champion", project) == "1"
    mirror_aliases("iot-anomaly", {"2": ["champion"]}, project)
    assert vertex_registry_version("vertex:iot-anomaly@champion", project) == "2"
    assert vertex_registry_version("vertex:iot-anomaly/1", project) == "1"
    assert downloads(stand_in) == 0


def stored_object(stand_in: VertexStandIn, version_id: str, relative: str):
    bucket, _, prefix = stand_in.model(f"1001@{version_id}")["artifactUri"].removeprefix("gs://").partition("/")
    return stand_in.objects[bucket][f"{prefix}/{relative}"]


def add_object(stand_in: VertexStandIn, relative: str, data: bytes) -> None:
    """An object written beside version 1's staged files (as anyone with write access to the bucket could)."""
    stored = stored_object(stand_in, "1", MANIFEST)
    name = stored.name.removesuffix(MANIFEST) + relative
    stand_in.objects[stored.bucket][name] = StoredObject(stored.bucket, name, data, "application/octet-stream", 99, {})


def test_a_changed_staged_file_is_refused(stand_in, project, uploaded, tmp_path):
    stored = stored_object(stand_in, "1", "model.json")
    stored.data = stored.data.replace(b'"threshold": ', b'"threshold": 1')
    with pytest.raises(UntrustedModelError, match="model.json does not match its manifest"):
        resolve_vertex_version("vertex:iot-anomaly@champion", project, tmp_path / "cache")


def test_files_rewritten_with_their_manifest_are_refused_by_the_recorded_digest(stand_in, project, uploaded,
                                                                                tmp_path):
    weights, manifest = (stored_object(stand_in, "2", name) for name in ("model.safetensors", MANIFEST))
    weights.data = bytes(len(weights.data))
    recorded = json.loads(manifest.data)
    recorded["files"]["model.safetensors"] = hashlib.sha256(weights.data).hexdigest()
    manifest.data = json.dumps(recorded, indent=2).encode()
    with pytest.raises(UntrustedModelError, match="manifest.json has sha256 .* was recorded for it"):
        resolve_vertex_version("vertex:iot-anomaly@challenger", project, tmp_path / "cache")


def test_an_added_object_is_refused(stand_in, project, uploaded, tmp_path):
    add_object(stand_in, "extra.py", b"import os")
    with pytest.raises(UntrustedModelError, match="extra.py is not in its manifest"):
        resolve_vertex_version("vertex:1001/1", project, tmp_path / "cache")


def test_an_object_escaping_the_folder_is_refused(stand_in, project, uploaded, tmp_path):
    add_object(stand_in, "transform/../../escape.txt", b"x")
    with pytest.raises(UntrustedModelError, match="outside the version folder"):
        resolve_vertex_version("vertex:1001/1", project, tmp_path / "cache")
    assert not (tmp_path / "cache" / "vertex" / "test-project" / "us-central1" / "1001" / "escape.txt").exists()
    assert not list((tmp_path / "cache" / "vertex" / "test-project" / "us-central1" / "1001").iterdir())


def test_a_version_without_a_recorded_digest_is_refused(stand_in, project, trained, tmp_path):
    aiplatform.Model.upload(display_name="unlabelled", artifact_uri=f"{BUCKET}/somewhere",
                            serving_container_image_uri=SERVING.image_uri)
    with pytest.raises(UntrustedModelError, match="record no manifest digest"):
        resolve_vertex_version("vertex:unlabelled@default", project, tmp_path / "cache")
    assert downloads(stand_in) == 0


@pytest.mark.parametrize(("uri", "named"), [
    ("vertex:no-such-model@champion", "no Vertex AI model named 'no-such-model'"),
    ("vertex:iot-anomaly@retired", "vertex:iot-anomaly@retired not found"),
    ("vertex:iot-anomaly/9", "vertex:iot-anomaly/9 not found"),
    ("vertex:4242@champion", "vertex:4242@champion not found"),
])
def test_unknown_models_aliases_and_versions_are_named(stand_in, project, uploaded, tmp_path, uri, named):
    with pytest.raises(LookupError, match=named):
        resolve_vertex_version(uri, project, tmp_path / "cache")
    with pytest.raises(LookupError, match=named):
        vertex_registry_version(uri, project)


@pytest.mark.parametrize("uri", [
    "vertex:", "vertex:iot-anomaly", "vertex:iot-anomaly@", "vertex:iot-anomaly/", "vertex:iot-anomaly/v2",
    "vertex:@champion", "vertex:a/b/3", "vertex:iot-anomaly@Champion", "vertex:iot-anomaly@champion/2",
    'vertex:say"hi"@champion', "models:/iot-anomaly@champion",
])
def test_malformed_references_are_refused(uri, tmp_path):
    with pytest.raises(ValueError, match="vertex|version alias"):
        parse_vertex_uri(uri)
    with pytest.raises(ValueError):
        resolve_vertex_version(uri, VertexProject(project="p"), tmp_path)


def test_reference_forms():
    assert parse_vertex_uri("vertex:iot-anomaly@champion") == ("iot-anomaly", "champion", None)
    assert parse_vertex_uri("vertex:1234567890/3") == ("1234567890", None, "3")
    assert parse_vertex_uri("vertex:Pump Line 2@stable-v2") == ("Pump Line 2", "stable-v2", None)
    assert is_vertex_uri("vertex:x@y") and not is_vertex_uri("models:/x@y")
