"""Registered versions uploaded to the Vertex AI Model Registry, their aliases mirrored and deployed, through the real
aiplatform and storage clients against the local stand-in (``tests/vertex_stand_in.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest
from google.cloud import aiplatform
from pydantic import ValidationError

from model_handlers.model_version import ModelVersion
from model_handlers.vertex import VertexProject
from tests.registry_versions import register, variant
from tests.vertex_stand_in import VertexStandIn
from training.settings import VertexServing
from training.vertex_register import deploy_version, mirror_aliases, mlflow_aliases, upload_version

BUCKET = "gs://stage-bucket"
IMAGE = "europe-docker.pkg.dev/test-project/serving/iot-anomaly:1"
SERVING = VertexServing(image_uri=IMAGE, env={"MLFLOW_MODEL_NAME": "iot-anomaly"})
T4 = int(aiplatform.gapic.AcceleratorType.NVIDIA_TESLA_T4)  # enums travel as integers (enum-encoding=int)


@pytest.fixture
def versions(trained, tmp_path: Path) -> tuple[ModelVersion, ModelVersion]:
    """The trained champion (MLflow v1) and a variant with another threshold, labelled as MLflow v2."""
    first = trained.version
    second = variant(first, tmp_path / "v2", threshold=first.threshold * 1.5).with_identity(first.name, "2")
    return first, second


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def aliases_by_version(stand_in: VertexStandIn, model_id: str = "1001") -> dict[str, list[str]]:
    return {version_id: sorted(version["versionAliases"])
            for version_id, version in stand_in.models[model_id].versions.items()}


def test_upload_stages_the_version_and_labels_it(stand_in, project, versions):
    first, _ = versions
    uploaded = upload_version(first, project, SERVING, aliases=["champion"])

    assert (uploaded.display_name, uploaded.model_id, uploaded.version_id) == ("iot-anomaly", "1001", "1")
    assert uploaded.resource_name == "projects/test-project/locations/us-central1/models/1001"
    assert uploaded.aliases == ("champion",) and uploaded.uri == "vertex:1001/1"
    stored = stand_in.model("1001@1")
    staged = stand_in.files_under(stored["artifactUri"])
    assert stored["artifactUri"] == f"{BUCKET}/iotml-models/iot-anomaly/1-{first.manifest_sha256[:16]}"
    assert staged == files_of(first.path)
    assert {"model.json", "model.safetensors", "MLmodel", "manifest.json", "transform/attributes.json"} <= staged.keys()
    assert any(name.endswith("/.tft_metadata/schema.pbtxt") for name in staged), "dot-files are staged too"

    [request] = stand_in.requests_to("/models:upload", "POST")
    sent = request.body["model"]
    assert sent["containerSpec"] == {
        "imageUri": IMAGE, "predictRoute": "/invocations", "healthRoute": "/ping",
        "ports": [{"containerPort": 8080}], "env": [{"name": "MLFLOW_MODEL_NAME", "value": "iot-anomaly"}]}
    assert sent["labels"] == {
        "mlflow_model": "iot-anomaly", "mlflow_version": "1", "transform_id": first.transform_id,
        "manifest_sha256_1": first.manifest_sha256[:32], "manifest_sha256_2": first.manifest_sha256[32:]}
    assert sorted(sent["versionAliases"]) == ["champion", "default"]
    assert sent["displayName"] == "iot-anomaly" and sent["versionDescription"] == "MLflow iot-anomaly v1"
    assert "parentModel" not in request.body


def test_a_second_version_joins_the_parent_and_takes_the_alias(stand_in, project, versions):
    first, second = versions
    upload_version(first, project, SERVING, aliases=["champion"])
    uploaded = upload_version(second, project, SERVING, aliases=["champion"])

    assert (uploaded.model_id, uploaded.version_id, uploaded.aliases) == ("1001", "2", ("champion",))
    request = stand_in.requests_to("/models:upload", "POST")[1]
    assert request.body["parentModel"] == "projects/test-project/locations/us-central1/models/1001"
    assert request.body["model"]["versionAliases"] == ["champion"]
    assert request.body["model"]["labels"]["mlflow_version"] == "2"
    assert aliases_by_version(stand_in) == {"1": ["default"], "2": ["champion"]}
    assert stand_in.files_under(stand_in.model("1001@2")["artifactUri"]) == files_of(second.path)


def test_uploading_a_version_again_returns_it_with_the_aliases(stand_in, project, versions, tmp_path):
    first, second = versions
    upload_version(first, project, SERVING)
    upload_version(second, project, SERVING, aliases=["champion"])
    staged = sum(len(objects) for objects in stand_in.objects.values())

    again = upload_version(first, project, SERVING, aliases=["champion", "stable"])
    assert (again.version_id, again.aliases) == ("1", ("champion", "stable"))
    assert len(stand_in.requests_to("/models:upload")) == 2
    assert sum(len(objects) for objects in stand_in.objects.values()) == staged
    assert aliases_by_version(stand_in) == {"1": ["champion", "default", "stable"], "2": []}
    assert upload_version(first, project, SERVING).aliases == ("champion", "stable")

    changed = variant(first, tmp_path / "changed", threshold=first.threshold * 2).with_identity(first.name, "1")
    with pytest.raises(ValueError, match="already Vertex AI version 1 .* with other files"):
        upload_version(changed, project, SERVING)


def test_mirror_aliases_moves_them_to_match_mlflow(stand_in, project, versions, tmp_path):
    first, second = versions
    upload_version(first, project, SERVING, aliases=["champion"])
    upload_version(second, project, SERVING, aliases=["challenger", "stable"])

    moved = mirror_aliases("iot-anomaly", {"1": ["challenger"], "2": ["champion"]}, project)
    assert [(v.version_id, v.aliases) for v in moved] == [("1", ("challenger",)), ("2", ("champion",))]
    assert aliases_by_version(stand_in) == {"1": ["challenger", "default"], "2": ["champion"]}
    assert [r.body for r in stand_in.requests_to(":mergeVersionAliases")] == [
        {"versionAliases": ["challenger"]}, {"versionAliases": ["champion", "-stable"]}]
    assert stand_in.requests_to(":mergeVersionAliases")[0].path.endswith("/models/1001@1:mergeVersionAliases")

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"  # its own: other tests move the trained fixture's champion
    register(tracking, tmp_path, first.name, first)
    registry = mlflow_aliases(tracking, first.name)
    assert registry == {"1": ("champion",)} and first.version == "1"
    mirror_aliases("iot-anomaly", registry, project)
    assert aliases_by_version(stand_in)["1"] == ["champion", "default"]
    assert aliases_by_version(stand_in)["2"] == []

    before = len(stand_in.requests_to(":mergeVersionAliases"))
    with pytest.raises(LookupError, match="MLflow versions 7 hold aliases but are not uploaded"):
        mirror_aliases("iot-anomaly", {"1": [], "7": ["champion"]}, project)
    with pytest.raises(ValueError, match="alias 'champion' is given to MLflow versions 1 and 2"):
        mirror_aliases("iot-anomaly", {"1": ["champion"], "2": ["champion"]}, project)
    with pytest.raises(LookupError, match="no Vertex AI model named 'elsewhere'"):
        mirror_aliases("elsewhere", {}, project)
    assert len(stand_in.requests_to(":mergeVersionAliases")) == before


def test_deploy_then_a_canary_beside_it(stand_in, project, versions):
    first, second = versions
    upload_version(first, project, SERVING, aliases=["champion"])
    challenger = upload_version(second, project, SERVING, aliases=["challenger"])

    main = deploy_version("vertex:iot-anomaly@champion", project, endpoint_display_name="iot-anomaly-serving",
                          machine_type="n1-standard-4", accelerator_type="NVIDIA_TESLA_T4", accelerator_count=1,
                          min_replicas=1, max_replicas=3)
    assert main.endpoint_resource_name == "projects/test-project/locations/us-central1/endpoints/2001"
    assert (main.endpoint_id, main.deployed_model_id, main.traffic_split) == ("2001", "3001", {"3001": 100})
    [deploy] = stand_in.requests_to(":deployModel", "POST")
    assert deploy.body["deployedModel"]["model"] == "projects/test-project/locations/us-central1/models/1001@1"
    assert deploy.body["deployedModel"]["displayName"] == "iot-anomaly-v1"
    assert deploy.body["deployedModel"]["dedicatedResources"] == {
        "machineSpec": {"machineType": "n1-standard-4", "acceleratorType": T4, "acceleratorCount": 1},
        "minReplicaCount": 1, "maxReplicaCount": 3}
    assert deploy.body["trafficSplit"] == {"0": 100}

    canary = deploy_version(challenger, project, endpoint=main.endpoint_id, traffic_percentage=10,
                            machine_type="n1-standard-4", max_replicas=2, deployed_display_name="canary")
    assert (canary.endpoint_id, canary.deployed_model_id) == ("2001", "3002")
    assert canary.traffic_split == {"3001": 90, "3002": 10}
    request = stand_in.requests_to(":deployModel", "POST")[1]
    assert request.body["trafficSplit"] == {"3001": 90, "0": 10}
    assert request.body["deployedModel"]["model"].endswith("/models/1001@2")
    assert request.body["deployedModel"]["displayName"] == "canary"
    assert request.body["deployedModel"]["dedicatedResources"] == {
        "machineSpec": {"machineType": "n1-standard-4"}, "minReplicaCount": 1, "maxReplicaCount": 2}
    assert stand_in.endpoint("2001")["trafficSplit"] == {"3001": 90, "3002": 10}

    again = deploy_version("vertex:1001/2", project, endpoint_display_name="iot-anomaly-serving")
    assert (again.endpoint_id, again.deployed_model_id, again.traffic_split) == ("2001", "3003", {"3003": 100})
    assert [deployed["id"] for deployed in stand_in.endpoint("2001")["deployedModels"]] == ["3001", "3002", "3003"]
    assert len(stand_in.requests_to("/endpoints", "POST")) == 1, "the endpoint of that display name is reused"


@pytest.mark.parametrize(("options", "message"), [
    ({}, "endpoint / endpoint_display_name: give exactly one"),
    ({"endpoint": "1", "endpoint_display_name": "e"}, "endpoint / endpoint_display_name: give exactly one"),
    ({"endpoint": "1", "traffic_percentage": 0}, "traffic_percentage: must be 1..100, got 0"),
    ({"endpoint": "1", "traffic_percentage": 101}, "traffic_percentage: must be 1..100"),
    ({"endpoint": "1", "min_replicas": 0}, "min_replicas: must be >= 1"),
    ({"endpoint": "1", "min_replicas": 3, "max_replicas": 2}, "max_replicas: must be >= min_replicas"),
    ({"endpoint": "1", "accelerator_type": "NVIDIA_TESLA_T4"}, "accelerator_count: must be > 0"),
    ({"endpoint": "1", "accelerator_count": 1}, "accelerator_count: must be > 0"),
    ({"endpoint": "1", "accelerator_type": "NVIDIA_TESLA_X9", "accelerator_count": 1}, "accelerator_type: unknown"),
    ({"endpoint": "1", "machine_type": ""}, "machine_type: required"),
])
def test_deployment_options_are_checked_before_any_request(stand_in, project, options, message):
    with pytest.raises(ValueError, match=message):
        deploy_version("vertex:iot-anomaly@champion", project, **options)
    assert stand_in.requests == []


def test_canary_needs_something_beside_it(stand_in, project, versions):
    upload_version(versions[0], project, SERVING)
    with pytest.raises(ValueError, match="traffic_percentage: 10 % is a canary, but endpoint .* serves nothing"):
        deploy_version("vertex:1001/1", project, endpoint_display_name="empty", traffic_percentage=10)
    assert stand_in.requests_to(":deployModel") == []


@pytest.mark.parametrize(("aliases", "message"), [
    (["Champion"], "version alias 'Champion' is not valid on Vertex AI"),
    (["champion_2"], "version alias 'champion_2' is not valid"),
    (["c"], "version alias 'c' is not valid"),
    (["default"], "version alias 'default' is Vertex AI's own"),
])
def test_aliases_vertex_refuses_are_refused_first(stand_in, project, versions, aliases, message):
    with pytest.raises(ValueError, match=message):
        upload_version(versions[0], project, SERVING, aliases=aliases)
    assert stand_in.requests == []


def test_upload_needs_a_registered_version_and_a_staging_bucket(stand_in, project, versions, tmp_path):
    local = variant(versions[0], tmp_path / "local")
    with pytest.raises(ValueError, match="is not a registered version"):
        upload_version(local, project, SERVING)
    with pytest.raises(ValueError, match="staging_bucket: required"):
        upload_version(versions[0], project.model_copy(update={"staging_bucket": None}), SERVING)
    assert stand_in.requests == []


@pytest.mark.parametrize(("fields", "message"), [
    ({"credentials": "anonymous"}, "anonymous is for a local stand-in only"),
    ({"credentials": "anonymous", "api_endpoint": "europe-west4-aiplatform.googleapis.com"}, "local stand-in only"),
    ({"api_endpoint": "http://127.0.0.1:8080"}, "unencrypted"),
    ({"staging_bucket": "s3://bucket"}, "expected gs://"),
    ({"zone": "a"}, "Extra inputs are not permitted"),
])
def test_project_settings_are_checked(fields, message):
    with pytest.raises(ValidationError, match=message):
        VertexProject(project="p", **fields)
