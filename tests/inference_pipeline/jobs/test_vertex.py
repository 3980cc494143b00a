"""The Vertex AI path end to end, through the real aiplatform client against the local stand-in
(``tests/vertex_stand_in.py``): ``iotml train`` with ``training.registry: vertex`` registers in MLflow and Vertex,
``iotml vertex upload`` and ``iotml models promote`` keep Vertex's aliases mirrored, a stream resolves
``vertex:iot-anomaly@champion`` and follows its promotion, ``iotml vertex deploy`` puts versions on an endpoint
(machine, accelerator, replicas, canary split), and ``vertex_endpoint`` serves the deployed version."""
import json
import sqlite3

import pytest

from inference_pipeline.cli import main
from inference_pipeline.config import load_config
from model_handlers.kinds import served_fleet
from model_handlers.resolve import resolve_model_version
from tests.conftest import REPO
from tests.registry_versions import register, variant
from training.register import promote_version
from training.simulate import simulate_fleet, write_frame

IMAGE = "europe-docker.pkg.dev/test-project/serving/iot-anomaly:1"
T4 = 5  # AcceleratorType.NVIDIA_TESLA_T4: the REST client sends enums as integers


def settings_of(stand_in, work, **more) -> list[str]:
    """CLI arguments: the work dir, and the stand-in as ``model.vertex`` with a serving container."""
    args = ["--work-dir", str(work), "--set", f"model.vertex={json.dumps(stand_in.model_settings())}",
            "--set", f"training.vertex_serving={json.dumps({'image_uri': IMAGE})}"]
    for field, value in more.items():
        args += ["--set", f"{field}={json.dumps(value)}"]
    return args


def test_train_with_the_vertex_registry_then_stream_from_it(stand_in, tmp_path, capsys):
    start = 1767225600.0
    write_frame(simulate_fleet(3, 1200, seed=5, start=start, fault_rate=0), tmp_path / "train.csv")
    write_frame(simulate_fleet(3, 600, seed=5, start=start + 1200, fault_rate=4), tmp_path / "eval.csv")
    replay = write_frame(simulate_fleet(3, 300, seed=5, start=start + 1800), tmp_path / "replay.csv")
    common = settings_of(stand_in, tmp_path / "work", **{"training.epochs": 3, "training.registry": "vertex"})
    assert main(["train", "--train-data", str(tmp_path / "train.csv"), "--eval-data", str(tmp_path / "eval.csv"),
                 *common]) == 0
    [upload] = stand_in.requests_to("/models:upload", "POST")
    sent = upload.body["model"]
    assert sent["labels"]["mlflow_model"] == "iot-anomaly" and sent["labels"]["mlflow_version"] == "1"
    assert sent["containerSpec"]["imageUri"] == IMAGE and sent["containerSpec"]["predictRoute"] == "/invocations"
    assert "champion" in stand_in.model("1001@1")["versionAliases"]
    streamed = ["--set", "model.uri=vertex:iot-anomaly@champion"]
    assert main(["stream", "--source", str(replay), *common, *streamed]) == 0
    with sqlite3.connect(tmp_path / "work" / "results.db") as db:
        count, names = db.execute("SELECT COUNT(*), GROUP_CONCAT(DISTINCT model_name || '/' || model_version) "
                                  "FROM predictions").fetchone()
    assert (count, names) == (900, "iot-anomaly/1")


def two_versions(stand_in, trained, folder, name: str, factor: float) -> tuple[str, list[str]]:
    """The trained version and one with ``factor`` times its threshold registered as v1 (champion) and v2 of
    ``name`` in a registry of their own; (its tracking URI, the CLI arguments pointing at it and the stand-in)."""
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    first = trained.version
    for version in (first, variant(first, folder / "v2", threshold=factor * first.threshold)):
        register(tracking, folder, name, version)
    return tracking, settings_of(stand_in, folder / "work", **{"model.tracking_uri": tracking})


def test_upload_promote_mirror_and_follow_the_vertex_alias(stand_in, trained, tmp_path, capsys):
    first = trained.version
    tracking, common = two_versions(stand_in, trained, tmp_path, "line-a", 4)
    assert main(["vertex", "upload", "line-a", *common]) == 0  # the champion, v1
    assert capsys.readouterr().out.splitlines() == ["line-a v1 (vertex:1001/1) aliases: champion"]
    model = load_config(REPO / "configs" / "local.yaml", {"model": {
        "uri": "vertex:line-a@champion", "vertex": stand_in.model_settings(), "tracking_uri": tracking}}).model
    version = resolve_model_version(model.uri, tracking, tmp_path / "cache", model.vertex)
    served = served_fleet(model, version, tracking, tmp_path / "cache").default
    assert served.watching and served.check_promotion().version == "1"

    promote_version(tracking, "line-a", "2")
    assert main(["vertex", "upload", "line-a", "2", *common]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == ["line-a v1 (vertex:1001/1) aliases: -",
                                                            "line-a v2 (vertex:1001/2) aliases: champion"]
    promoted = served.check_promotion()
    assert (promoted.version, promoted.threshold) == ("2", pytest.approx(4 * first.threshold))
    assert promoted.transform_id == first.transform_id


def test_deploy_on_an_accelerator_then_a_canary(stand_in, trained, tmp_path, capsys):
    _, common = two_versions(stand_in, trained, tmp_path, "line-b", 2)
    assert main(["vertex", "upload", "line-b", "1", *common]) == 0
    assert main(["vertex", "upload", "line-b", "2", *common]) == 0
    assert main(["vertex", "deploy", "vertex:line-b/1", "--endpoint-name", "line-b", "--machine-type",
                 "n1-standard-4", "--accelerator-type", "NVIDIA_TESLA_T4", "--accelerator-count", "1",
                 "--min-replicas", "1", "--max-replicas", "3", *common]) == 0
    assert main(["vertex", "deploy", "vertex:line-b/2", "--endpoint-name", "line-b", "--traffic-percentage", "10",
                 *common]) == 0
    out = capsys.readouterr().out
    assert "handler: vertex_endpoint" in out and "90 %" in out and "10 %" in out
    first_deploy, canary = (r.body for r in stand_in.requests_to(":deployModel", "POST"))
    resources = first_deploy["deployedModel"]["dedicatedResources"]
    assert resources["machineSpec"] == {"machineType": "n1-standard-4", "acceleratorType": T4, "acceleratorCount": 1}
    assert (resources["minReplicaCount"], resources["maxReplicaCount"]) == (1, 3)
    assert first_deploy["deployedModel"]["model"].endswith("models/1001@1")
    assert canary["deployedModel"]["model"].endswith("models/1001@2")
    assert sorted(canary["trafficSplit"].values()) == [10, 90]


def test_a_vertex_reference_without_a_project_fails_at_start_naming_the_field(tmp_path):
    config = load_config(REPO / "configs" / "local.yaml", {"model.uri": "vertex:iot-anomaly@champion"})
    with pytest.raises(ValueError, match="model.vertex"):
        resolve_model_version(config.model.uri, config.tracking_uri, tmp_path, config.model.vertex)
    with pytest.raises(ValueError, match="model.vertex.staging_bucket"):
        load_config(REPO / "configs" / "local.yaml", {"training.registry": "vertex"})
