"""The Vertex AI / Cloud Storage stand-in (tests/vertex_stand_in.py) driven by the real google-cloud-aiplatform,
google-cloud-storage and Beam ``VertexAIModelHandlerJSON`` clients."""
from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.ml.inference.vertex_ai_inference import VertexAIModelHandlerJSON
from apache_beam.testing.util import assert_that, equal_to
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform, storage
from google.cloud.aiplatform import initializer

from tests.vertex_stand_in import StandInVertexAIModelHandlerJSON, VertexStandIn, vertex_stand_in

IMAGE = "europe-docker.pkg.dev/test-project/serving/iotml-server:1.0"
T4 = int(aiplatform.gapic.AcceleratorType.NVIDIA_TESLA_T4)  # enums travel as integers (enum-encoding=int)


@pytest.fixture
def stand_in() -> Iterator[VertexStandIn]:
    with vertex_stand_in() as server:
        yield server


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "transform").mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"kind": "xgboost", "features": ["a", "b"]}))
    (folder / "transform" / "scaler.bin").write_bytes(bytes(range(256)) + b"\r\n--boundary-like\r\n")
    return folder


def upload(artifact_uri: str, **overrides: Any) -> aiplatform.Model:
    arguments = dict(
        display_name="iotml-anomaly", artifact_uri=artifact_uri, serving_container_image_uri=IMAGE,
        serving_container_predict_route="/v1/predict", serving_container_health_route="/health",
        serving_container_ports=[8080], serving_container_environment_variables={"MODEL_KIND": "xgboost"},
        labels={"team": "iot"},
    )
    return aiplatform.Model.upload(**{**arguments, **overrides})


def doubler(tag: str) -> Callable[[list, Any], list]:
    """A predictor answering ``{"y": 2 * x, "by": tag, "p": parameters}`` per instance."""
    return lambda instances, parameters: [{"y": item["x"] * 2, "by": tag, "p": parameters} for item in instances]


def test_upload_stages_the_local_folder_and_sends_the_container_spec(stand_in: VertexStandIn, model_dir: Path) -> None:
    model = upload(str(model_dir), version_aliases=["champion"])

    assert model.resource_name == "projects/test-project/locations/us-central1/models/1001"
    assert model.version_id == "1"
    assert sorted(model.version_aliases) == ["champion", "default"]
    assert model.uri.startswith("gs://stage-bucket/vertex_ai_auto_staging/")
    staged = stand_in.files_under(model.uri)
    assert sorted(staged) == ["model.json", "transform/scaler.bin"]
    assert json.loads(staged["model.json"]) == {"kind": "xgboost", "features": ["a", "b"]}
    assert staged["transform/scaler.bin"] == (model_dir / "transform" / "scaler.bin").read_bytes()

    [request] = stand_in.requests_to("/models:upload", "POST")
    sent = request.body["model"]
    assert sent["artifactUri"] == model.uri
    assert sent["containerSpec"] == {
        "imageUri": IMAGE, "predictRoute": "/v1/predict", "healthRoute": "/health",
        "ports": [{"containerPort": 8080}], "env": [{"name": "MODEL_KIND", "value": "xgboost"}],
    }
    assert sent["labels"] == {"team": "iot"}
    assert "parentModel" not in request.body
    assert stand_in.requests_to("/operations/9001", "GET"), "the upload's operation was polled"
    assert model.gca_resource.container_spec.image_uri == IMAGE


def test_versions_under_one_parent_and_alias_moves(stand_in: VertexStandIn, model_dir: Path) -> None:
    first = upload(str(model_dir), version_aliases=["champion"])
    second = upload(str(model_dir), parent_model=first.resource_name, version_aliases=["challenger"],
                    is_default_version=False)

    assert (second.resource_name, second.version_id) == (first.resource_name, "2")
    assert stand_in.requests_to("/models:upload")[1].body["parentModel"] == first.resource_name
    assert stand_in.model("1001@default")["versionId"] == "1"

    registry = first.versioning_registry
    registry.add_version_aliases(["champion"], version="2")
    assert stand_in.requests_to("/models/1001@2:mergeVersionAliases")[0].body == {"versionAliases": ["champion"]}
    assert sorted(stand_in.model("1001@1")["versionAliases"]) == ["default"]
    assert sorted(stand_in.model("1001@2")["versionAliases"]) == ["challenger", "champion"]
    assert aiplatform.Model("1001@champion").version_id == "2"
    assert aiplatform.Model(first.resource_name).version_id == "1"

    registry.remove_version_aliases(["challenger"], version="2")
    assert [v.version_aliases for v in sorted(registry.list_versions(), key=lambda v: v.version_id)] == [
        ["default"], ["champion"]]

    third = upload(str(model_dir), parent_model="1001", version_aliases=["champion"], is_default_version=True)
    assert third.version_id == "3"
    assert sorted(stand_in.model("1001@3")["versionAliases"]) == ["champion", "default"]
    assert stand_in.model("1001@2")["versionAliases"] == []
    assert aiplatform.Model("1001").version_id == "3"

    other = upload(str(model_dir), display_name="another-model")
    assert [m.resource_name for m in aiplatform.Model.list(filter='display_name="iotml-anomaly"')] == [
        first.resource_name]
    assert [m.resource_name for m in aiplatform.Model.list(filter="display_name=another-model")] == [
        other.resource_name]
    assert stand_in.requests_to("/models", "GET")[0].query["filter"] == 'display_name="iotml-anomaly"'


def test_deploy_canary_split_and_predict(stand_in: VertexStandIn, model_dir: Path) -> None:
    first = upload(str(model_dir))
    second = upload(str(model_dir), parent_model=first.resource_name, is_default_version=False)
    stand_in.register_predictor(first.versioned_resource_name, doubler("v1"))
    stand_in.register_predictor("1001@2", doubler("v2"))

    endpoint = aiplatform.Endpoint.create(display_name="iotml-endpoint", labels={"team": "iot"})
    assert endpoint.resource_name == "projects/test-project/locations/us-central1/endpoints/2001"
    assert aiplatform.Endpoint.list(filter='display_name="iotml-endpoint"')[0].resource_name == endpoint.resource_name

    endpoint.deploy(first, deployed_model_display_name="anomaly-v1", machine_type="n1-standard-4",
                    accelerator_type="NVIDIA_TESLA_T4", accelerator_count=1, min_replica_count=1, max_replica_count=3)
    [deploy] = stand_in.requests_to(":deployModel", "POST")
    assert deploy.body["deployedModel"]["model"] == f"{first.resource_name}@1"
    assert deploy.body["deployedModel"]["dedicatedResources"] == {
        "machineSpec": {"machineType": "n1-standard-4", "acceleratorType": T4, "acceleratorCount": 1},
        "minReplicaCount": 1, "maxReplicaCount": 3}
    assert deploy.body["trafficSplit"] == {"0": 100}
    assert endpoint.traffic_split == {"3001": 100}
    [deployed] = endpoint.list_models()
    assert deployed.dedicated_resources.machine_spec.accelerator_type.name == "NVIDIA_TESLA_T4"
    assert stand_in.endpoint("2001")["deployedModels"][0]["dedicatedResources"]["machineSpec"][
        "acceleratorType"] == "NVIDIA_TESLA_T4"
    assert stand_in.model("1001@1")["deployedModels"] == [{"endpoint": endpoint.resource_name,
                                                           "deployedModelId": "3001"}]

    endpoint.deploy(second, deployed_model_display_name="anomaly-v2", traffic_percentage=10,
                    machine_type="n1-standard-4", min_replica_count=1, max_replica_count=3)
    assert stand_in.requests_to(":deployModel")[1].body["trafficSplit"] == {"3001": 90, "0": 10}
    assert endpoint.traffic_split == {"3001": 90, "3002": 10}

    answers = [endpoint.predict(instances=[{"x": 1}, {"x": 2}], parameters={"threshold": 0.5}) for _ in range(10)]
    assert [a.deployed_model_id for a in answers].count("3002") == 1
    canary = next(a for a in answers if a.deployed_model_id == "3002")
    assert (canary.model_version_id, canary.model_resource_name) == ("2", first.resource_name)
    assert canary.predictions == [{"y": 2, "by": "v2", "p": {"threshold": 0.5}},
                                  {"y": 4, "by": "v2", "p": {"threshold": 0.5}}]
    assert answers[0].predictions[0]["by"] == "v1"
    assert stand_in.requests_to(":predict")[0].body == {"instances": [{"x": 1}, {"x": 2}],
                                                        "parameters": {"threshold": 0.5}}

    stand_in.serve(endpoint.resource_name, lambda instances, parameters: ["fixed"] * len(instances))
    assert endpoint.predict(instances=[{"x": 3}]).predictions == ["fixed"]

    endpoint.undeploy("3002")
    assert endpoint.traffic_split == {"3001": 100}
    assert stand_in.requests_to(":undeployModel")[0].body["deployedModelId"] == "3002"


def test_predict_failures_surface_as_api_errors(stand_in: VertexStandIn, model_dir: Path) -> None:
    model = upload(str(model_dir))
    endpoint = model.deploy(machine_type="n1-standard-4")
    with pytest.raises(exceptions.BadRequest, match="no predictor"):
        endpoint.predict(instances=[{"x": 1}])
    stand_in.register_predictor(model.resource_name, doubler("any"))
    stand_in.fail_next(":predict", code=429, status="RESOURCE_EXHAUSTED")
    with pytest.raises(exceptions.TooManyRequests):
        endpoint.predict(instances=[{"x": 1}])
    assert endpoint.predict(instances=[{"x": 1}]).predictions[0]["y"] == 2
    stand_in.register_predictor(model.resource_name, lambda instances, parameters: 1 / 0)
    with pytest.raises(exceptions.InternalServerError, match="ZeroDivisionError"):
        endpoint.predict(instances=[{"x": 1}])


def test_storage_client_roundtrip(stand_in: VertexStandIn) -> None:
    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    bucket = client.create_bucket("data-bucket")
    assert client.bucket("data-bucket").exists()
    assert not client.bucket("missing-bucket").exists()

    bucket.blob("runs/a/metrics.json").upload_from_string('{"auc": 0.9}', content_type="application/json")
    large = bytes(range(256)) * 5000
    chunked = bucket.blob("runs/a/big/weights.bin", chunk_size=256 * 1024)
    chunked.upload_from_file(io.BytesIO(large))  # no size given: a resumable upload in 256 KiB chunks
    assert {r.query["uploadType"] for r in stand_in.requests_to("/data-bucket/o", "POST")} == {"multipart",
                                                                                              "resumable"}
    assert len(stand_in.requests_to("/data-bucket/o", "PUT")) == 5

    assert [b.name for b in client.list_blobs("data-bucket", prefix="runs/a/")] == [
        "runs/a/big/weights.bin", "runs/a/metrics.json"]
    listing = client.list_blobs("data-bucket", prefix="runs/a/", delimiter="/")
    assert [b.name for b in listing] == ["runs/a/metrics.json"] and listing.prefixes == {"runs/a/big/"}
    assert bucket.blob("runs/a/big/weights.bin").download_as_bytes() == large
    assert bucket.get_blob("runs/a/metrics.json").content_type == "application/json"
    assert stand_in.read("gs://data-bucket/runs/a/metrics.json") == b'{"auc": 0.9}'
    bucket.blob("runs/a/metrics.json").delete()
    assert sorted(stand_in.files_under("gs://data-bucket/runs")) == ["a/big/weights.bin"]


def deployed_endpoint(stand_in: VertexStandIn, model_dir: Path) -> aiplatform.Endpoint:
    model = upload(str(model_dir))
    stand_in.register_predictor(model.resource_name, doubler("beam"))
    return model.deploy(machine_type="n1-standard-4")


def test_beam_handler_uses_the_process_wide_init(stand_in: VertexStandIn, model_dir: Path) -> None:
    endpoint = deployed_endpoint(stand_in, model_dir)
    handler = VertexAIModelHandlerJSON(endpoint_id=endpoint.name, project="test-project", location="us-central1")
    config = initializer.global_config
    assert (config.api_endpoint, config._api_transport) == (stand_in.url, "rest"), "the handler's init keeps them"

    client = handler.load_model()
    results = list(handler.run_inference([{"x": 1}, {"x": 5}], client, inference_args={"threshold": 0.7}))
    assert [(r.example, r.inference, r.model_id) for r in results] == [
        ({"x": 1}, {"y": 2, "by": "beam", "p": {"threshold": 0.7}}, "3001"),
        ({"x": 5}, {"y": 10, "by": "beam", "p": {"threshold": 0.7}}, "3001")]
    assert stand_in.requests_to(f"/endpoints/{endpoint.name}", "GET"), "constructor and load_model look it up"


def test_beam_handler_subclass_points_a_fresh_process_at_the_stand_in(stand_in: VertexStandIn, model_dir: Path) -> None:
    endpoint = deployed_endpoint(stand_in, model_dir)
    handler = StandInVertexAIModelHandlerJSON(endpoint_id=endpoint.name, project="test-project",
                                              location="us-central1", api_endpoint=stand_in.url)
    initializer.global_config.__init__()  # as in a fresh Beam worker: no aiplatform.init has happened
    client = handler.load_model()
    assert [r.inference["y"] for r in handler.run_inference([{"x": 2}], client)] == [4]

    initializer.global_config.__init__()
    with beam.Pipeline() as pipeline:
        outputs = (pipeline | beam.Create([{"x": 1}, {"x": 2}, {"x": 3}]) | RunInference(handler)
                   | beam.Map(lambda result: (result.example["x"], result.inference["y"], result.model_id)))
        assert_that(outputs, equal_to([(1, 2, "3001"), (2, 4, "3001"), (3, 6, "3001")]))
