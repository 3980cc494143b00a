"""The Dataflow deployment (``iotml deploy``, ``deploy/``): the GPU job built offline by Beam's dry run, a launch's
requirements failing within seconds and saying which, a launch against the local Cloud Storage stand-in
(``tests/vertex_stand_in.py``) and a local Dataflow API answering job creation, the model version the workers read
from its staged copy, and the deploy files checked as far as no container engine is needed: the lock file, the
Dockerfiles' files and the Flex Template's parameters."""
import ast
import json
import pickle
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path

import pytest
from apache_beam.internal import pickler
from apache_beam.portability.api import beam_runner_api_pb2
from google.cloud import storage
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from inference_pipeline.cli import main
from inference_pipeline.config import ConfigError, load_config
from inference_pipeline.jobs.deploy import flex_template_config, flex_template_main, flex_template_parser
from inference_pipeline.runtime.dataflow import dataflow_options
from inference_pipeline.runtime.staging import StagedVersion, stage_version, staged
from model_handlers.manifest import UntrustedModelError
from model_handlers.model_version import ModelVersion
from tests.conftest import REPO
from tests.vertex_stand_in import vertex_stand_in

DATAFLOW = REPO / "configs" / "dataflow.yaml"
PUBSUB = REPO / "configs" / "pubsub.yaml"
DEPLOY = REPO / "deploy"
BUCKET = "my-project-iotml"
GPU_OPTION = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver:latest"
WORKER_IMAGE = "europe-west4-docker.pkg.dev/my-project/iotml/worker:0.1.0"
RUNNING_JOB = "2026-11-01_00_00_00-111"
NEW_JOB = "2026-11-28_09_00_00-222"
# The pipeline's named steps (README diagram) and each sink's writes, as Dataflow names them.
STEPS = ("ReadEvents/Subscription", "ScoreEvents/ParseEvents", "ScoreEvents/DropDuplicates",
         "ScoreEvents/DeviceFeatures", "ScoreEvents/ScaleFeatures", "ScoreEvents/KeyByModelGroup",
         "ScoreEvents/RunInference", "ScoreEvents/Score", "ScoreEvents/TrackIncidents", "ScoreEvents/DeviceMinutes",
         "ScoreEvents/InferenceErrors", "WriteAlertsTo_alert_topic/PubSub",
         *(f"Write{origin}DeadLettersTo_dead_letter_topic/PubSub" for origin in ("Parse", "Inference", "Score")),
         "WritePredictionsAndAlertsTo_warehouse/WritePredictions", "WritePredictionsAndAlertsTo_warehouse/WriteAlerts",
         "WriteDeviceMinutesTo_warehouse/WriteDeviceMinutes",
         *(f"Write{origin}DeadLettersTo_warehouse/WriteDeadLetters" for origin in ("Parse", "Inference", "Score")),
         "ReportPredictions", "ReportDuplicates",
         *(f"Report{origin}DeadLetters" for origin in ("Parse", "Inference", "Score")))


def deployment(trained, work: Path, **more) -> list[str]:
    """CLI arguments: configs/dataflow.yaml serving the trained fixture's registered version, cached under ``work``."""
    version = trained.version
    fields = {"work_dir": str(work), "model.tracking_uri": trained.config.tracking_uri,
              "model.uri": f"models:/{version.name}/{version.version}", **more}
    args = ["--config", str(DATAFLOW)]
    for field, value in fields.items():
        args += ["--set", f"{field}={json.dumps(value)}"]
    return args


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No credentials anywhere: no key file, an empty HOME and gcloud folder, the metadata server a closed port."""
    metadata_server = f"127.0.0.1:{closed_port()}"
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    for variable, value in {"HOME": tmp_path / "home", "CLOUDSDK_CONFIG": tmp_path / "gcloud",
                            "GCE_METADATA_HOST": metadata_server, "GCE_METADATA_IP": metadata_server}.items():
        monkeypatch.setenv(variable, str(value))


def assert_streams_on_gpu_workers_of_the_custom_container_through_every_step(job: dict) -> None:
    environment, [pool] = job["environment"], job["environment"]["workerPools"]
    assert job["type"] == "JOB_TYPE_STREAMING" and environment["version"]["job_type"] == "FNAPI_STREAMING"
    assert environment["sdkPipelineOptions"]["options"]["streaming"] is True
    assert "enable_streaming_engine" in environment["experiments"]
    assert GPU_OPTION in environment["serviceOptions"]
    assert pool["workerHarnessContainerImage"] == WORKER_IMAGE
    assert [image["containerImage"] for image in pool["sdkHarnessContainerImages"]] == [WORKER_IMAGE]
    names = {step["name"] for step in job["steps"]}
    assert not [step for step in STEPS if step not in names]


def test_dry_run_writes_the_whole_gpu_streaming_job_offline(trained, offline, tmp_path, capsys):
    output = tmp_path / "job.json"
    assert main(["deploy", "dataflow", *deployment(trained, tmp_path / "work"), "--dry-run",
                 "--output", str(output)]) == 0
    assert "nothing submitted" in capsys.readouterr().out
    job = json.loads(output.read_text())
    assert_streams_on_gpu_workers_of_the_custom_container_through_every_step(job)
    environment, [pool] = job["environment"], job["environment"]["workerPools"]
    assert "min_num_workers=1" in environment["serviceOptions"]
    assert (pool["machineType"], pool["numWorkers"], pool["autoscalingSettings"]["maxNumWorkers"]) == (
        "g2-standard-4", 1, 4)
    assert pool["ipConfiguration"] == "WORKER_IP_PRIVATE" and pool["network"] == "iotml"
    assert environment["serviceAccountEmail"] == "iotml-worker@my-project.iam.gserviceaccount.com"
    assert job["labels"] == {"app": "iotml", "team": "reliability"}


def test_dry_run_serves_the_vertex_endpoint_handler_of_the_local_stand_in(trained, stand_in, tmp_path, capsys):
    from google.cloud import aiplatform

    model = aiplatform.Model.upload(display_name="iot-anomaly", artifact_uri="gs://stage-bucket/iot-anomaly",
                                    serving_container_image_uri="europe-docker.pkg.dev/p/serving/iot-anomaly:1")
    endpoint = aiplatform.Endpoint.create(display_name="line-a")
    endpoint.deploy(model, machine_type="n1-standard-4", min_replica_count=1, max_replica_count=1)
    vertex_model = {"handler": "vertex_endpoint", "endpoint_id": endpoint.name, "vertex": stand_in.model_settings(),
                    "uri": f"models:/{trained.version.name}/{trained.version.version}", "watch_s": 0,
                    "tracking_uri": trained.config.tracking_uri}
    output = tmp_path / "job.json"
    assert main(["deploy", "dataflow", *deployment(trained, tmp_path / "work", model=vertex_model), "--dry-run",
                 "--output", str(output)]) == 0
    assert_streams_on_gpu_workers_of_the_custom_container_through_every_step(json.loads(output.read_text()))


@pytest.mark.parametrize("command,config", [("stream", PUBSUB), ("deploy dataflow", DATAFLOW)])
def test_a_launch_without_credentials_fails_within_seconds_saying_so(offline, tmp_path, capsys, command, config):
    started = time.monotonic()
    assert main([*command.split(), "--config", str(config), "--work-dir", str(tmp_path / "work")]) == 2
    assert time.monotonic() - started < 10
    assert "no Google Cloud credentials" in capsys.readouterr().err


def fake_service_account(path: Path, token_uri: str) -> Path:
    """A well-formed service account key (a fresh RSA key) that no one issues tokens for."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "my-project", "private_key_id": "0" * 40, "private_key": key,
        "client_email": "launcher@my-project.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}))
    return path


def test_a_launch_without_network_fails_within_seconds_saying_so(offline, monkeypatch, tmp_path, capsys):
    key = fake_service_account(tmp_path / "key.json", "https://oauth2.invalid/token")  # .invalid never resolves
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    started = time.monotonic()
    assert main(["deploy", "dataflow", "--config", str(DATAFLOW), "--work-dir", str(tmp_path / "work")]) == 2
    assert time.monotonic() - started < 10
    assert "no network route to Google Cloud" in capsys.readouterr().err


def test_a_launch_without_the_bucket_names_it(trained, stand_in, tmp_path, capsys):
    args = deployment(trained, tmp_path / "work", pipeline_options={"no_auth": True})
    assert main(["deploy", "dataflow", *args]) == 2
    assert f"dataflow.temp_location: bucket gs://{BUCKET} does not exist" in capsys.readouterr().err


def test_a_launch_without_the_staged_model_names_where_and_how_to_stage_it(trained, stand_in, tmp_path, capsys):
    storage.Client(project="my-project").create_bucket(BUCKET)
    args = deployment(trained, tmp_path / "work", pipeline_options={"no_auth": True})
    assert main(["deploy", "dataflow", *args]) == 2
    version = trained.version
    err = capsys.readouterr().err
    assert f"model {version.name} v{version.version} is not staged at gs://{BUCKET}/models/{version.name}/" in err
    assert "iotml deploy stage-model" in err


class DataflowApi(BaseHTTPRequestHandler):
    """The Dataflow REST API as far as a launch uses it: jobs.list shows one running job named iotml-stream,
    jobs.create answers the job with an id. Requests are recorded on the server."""

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, None))
        self._answer({"jobs": [{"id": RUNNING_JOB, "name": "iotml-stream", "currentState": "JOB_STATE_RUNNING"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.requests.append(("POST", self.path, body))
        self._answer({**body, "id": NEW_JOB, "currentState": "JOB_STATE_PENDING"})

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def launched(trained, tmp_path_factory):
    """``iotml deploy stage-model`` then ``iotml deploy dataflow --update`` against the Cloud Storage stand-in and a
    local Dataflow API: (exit codes, printed output, requests the API received, the stand-in, the work dir)."""
    import contextlib
    import io

    server = ThreadingHTTPServer(("127.0.0.1", 0), DataflowApi)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = tmp_path_factory.mktemp("launched")
    args = deployment(trained, work, pipeline_options={
        "no_auth": True, "dataflow_endpoint": f"http://localhost:{server.server_address[1]}"},
        **{"dataflow.transform_name_mapping": {"ScoreEvents/Score": "ScoreEvents/Score"}})
    with vertex_stand_in() as stand_in:
        storage.Client(project="my-project").create_bucket(BUCKET)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            codes = (main(["deploy", "stage-model", *args]), main(["deploy", "dataflow", *args, "--update"]))
        yield codes, out.getvalue(), server.requests, stand_in, work
    server.shutdown()


def test_a_launch_prints_the_job_id_and_its_console_url_then_returns(launched, trained):
    codes, out, _, _, _ = launched
    assert codes == (0, 0)
    assert f"staged models:/{trained.version.name}/{trained.version.version} at gs://{BUCKET}/models/" in out
    assert f"submitted Dataflow job iotml-stream: {NEW_JOB}" in out
    assert (f"https://console.cloud.google.com/dataflow/jobs/europe-west4/{NEW_JOB}?project=my-project") in out


def test_the_submitted_job_replaces_the_running_one_on_gpu_workers_of_the_custom_container(launched):
    _, _, requests, stand_in, _ = launched
    [(_, path, job)] = [request for request in requests if request[0] == "POST"]
    assert path.startswith("/v1b3/projects/my-project/locations/europe-west4/jobs")
    environment, [pool] = job["environment"], job["environment"]["workerPools"]
    assert job["type"] in ("JOB_TYPE_STREAMING", 2) and GPU_OPTION in environment["serviceOptions"]
    assert pool["workerHarnessContainerImage"] == WORKER_IMAGE
    assert job["replaceJobId"] == RUNNING_JOB
    assert job["transformNameMapping"] == {"ScoreEvents/Score": "ScoreEvents/Score"}
    staged_files = stand_in.files_under(f"gs://{BUCKET}/tmp")
    assert [name for name in staged_files if name.endswith("/pipeline.pb")]


def test_workers_unpickle_the_submitted_graph_with_the_staged_model_copy(launched, trained, monkeypatch,
                                                                         tmp_path):
    """The staged pipeline, unpickled where the launcher's model folder is not: the copy is downloaded and
    verified, and the version's files are those the registry recorded."""
    _, _, _, stand_in, work = launched
    [pipeline_file] = [data for name, data in stand_in.files_under(f"gs://{BUCKET}/tmp").items()
                       if name.endswith("/pipeline.pb")]
    pipeline = beam_runner_api_pb2.Pipeline.FromString(pipeline_file)
    shutil.rmtree(work / "models")  # the launcher's copy, resolved from the registry
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the worker's temporary folder
    with stand_in.storage_env():
        served = [fn for transform in pipeline.components.transforms.values()
                  if transform.spec.urn == "beam:transform:pardo:v1"
                  for fn in [pickler.loads(beam_runner_api_pb2.ParDoPayload.FromString(
                      transform.spec.payload).do_fn.payload)] if "RunInference" in transform.unique_name]
    assert served
    copies = list((tmp_path / "iotml-models").rglob("manifest.json"))
    assert len(copies) == 1
    copy = ModelVersion.open(copies[0].parent, trained.version.manifest_sha256)
    assert copy.meta["threshold"] == trained.version.meta["threshold"]


def test_a_staged_copy_changed_in_the_bucket_is_refused_on_the_worker(trained, stand_in, monkeypatch, tmp_path):
    launcher = tmp_path / "launcher"
    shutil.copytree(trained.version.path, launcher)
    version = ModelVersion.open(launcher, trained.version.manifest_sha256).with_identity("iot-anomaly", "7")
    client = storage.Client(project="my-project")
    uri = stage_version(version, f"gs://{BUCKET}/models", client)
    reference = pickle.dumps(staged(version, f"gs://{BUCKET}/models"))
    shutil.rmtree(launcher)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "worker"))
    (tmp_path / "worker").mkdir()
    worker_copy = pickle.loads(reference)
    assert isinstance(worker_copy, StagedVersion) and worker_copy.path.is_relative_to(tmp_path / "worker")
    client.bucket(BUCKET).blob(f"{uri.split('/', 3)[3]}/model.json").upload_from_string(b'{"threshold": 0}')
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "other-worker"))
    (tmp_path / "other-worker").mkdir()
    with pytest.raises(UntrustedModelError):
        pickle.loads(reference)


def test_dataflow_config_refuses_what_cannot_run_there_naming_the_field():
    with pytest.raises(ConfigError, match="sinks.results.kind: sqlite"):
        load_config(DATAFLOW, {"sinks.results": {"kind": "sqlite"}})
    with pytest.raises(ConfigError, match="machine_type: nvidia-l4 GPUs are attached to g2"):
        load_config(DATAFLOW, {"dataflow.machine_type": "n1-standard-4"})
    with pytest.raises(ConfigError, match="model.watch_s"):
        load_config(DATAFLOW, {"model.watch_s": 15})


def test_flex_template_metadata_matches_the_launchers_parameters():
    metadata_file = json.loads((DEPLOY / "flex-template" / "metadata.json").read_text())
    actions = {action.dest: action for action in flex_template_parser()._actions if action.dest != "help"}
    parameters = {parameter["name"]: parameter for parameter in metadata_file["parameters"]}
    assert set(parameters) == set(actions) and metadata_file["streaming"] is True
    for name, parameter in parameters.items():
        assert parameter["isOptional"] == (not actions[name].required) and parameter["helpText"]
    examples = {"config": actions["config"].default, "model_uri": "models:/iot-anomaly@champion",
                "subscription": "projects/p/subscriptions/s",
                "overrides": "alerting.open_after=5;dataflow.max_workers=8"}
    for name, value in examples.items():
        assert all(re.fullmatch(pattern, value) for pattern in parameters[name]["regexes"]), name
    config = flex_template_config([
        "--config", str(DATAFLOW), "--model_uri", "models:/iot-anomaly/3", "--subscription",
        "projects/p/subscriptions/s", "--overrides", examples["overrides"], "--project=launch-project",
        "--region=us-central1", "--temp_location=gs://launch-bucket/tmp", "--job_name=iotml-stream-2"])
    assert (config.model.uri, config.source.subscription, config.alerting.open_after) == (
        "models:/iot-anomaly/3", "projects/p/subscriptions/s", 5)
    options = dataflow_options(config).get_all_options()
    assert (options["project"], options["region"], options["temp_location"], options["job_name"]) == (
        "launch-project", "us-central1", "gs://launch-bucket/tmp", "iotml-stream-2")
    assert options["max_num_workers"] == 8 and GPU_OPTION in options["dataflow_service_options"]


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) of each instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def build_context_sources(path: Path) -> list[str]:
    """The repository paths a Dockerfile's COPY and ADD take from the build context (the repository root)."""
    return [source for instruction, arguments in dockerfile(path) if instruction in ("COPY", "ADD")
            and "--from=" not in arguments for source in arguments.split()[:-1]]


@pytest.mark.parametrize("image", ["worker", "flex-template"])
def test_dockerfiles_copy_files_that_exist_and_their_ignore_file_keeps(image):
    path = DEPLOY / image / "Dockerfile"
    kept = {line[1:] for line in (DEPLOY / image / "Dockerfile.dockerignore").read_text().splitlines()
            if line.startswith("!")}
    sources = build_context_sources(path)
    assert sources and not [source for source in sources if not (REPO / source).exists()]
    assert not [source for source in sources if source not in kept]


def test_worker_image_boots_the_installed_beam_sdk_with_cuda_torch_from_the_lock():
    instructions = dockerfile(DEPLOY / "worker" / "Dockerfile")
    arguments = dict(re.findall(r"^(\w+)=(\S+)$", args)[0] for kind, args in instructions
                     if kind == "ARG" and "=" in args)
    assert (arguments["BEAM_VERSION"], arguments["PYTHON_VERSION"]) == (metadata.version("apache-beam"), "3.11")
    assert ("FROM", "apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam") in instructions
    assert ("COPY", "--from=beam /opt/apache/beam /opt/apache/beam") in instructions
    assert instructions[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')
    assert "--python-version 3.11" in (DEPLOY / "lock.sh").read_text()
    runs = " ".join(args for kind, args in instructions if kind == "RUN")
    assert "--require-hashes" in runs and "torch.version.cuda" in runs
    launcher = dockerfile(DEPLOY / "flex-template" / "Dockerfile")
    assert ("ENV", "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launch.py") in launcher
    assert ("COPY", "deploy/flex-template/launch.py /template/launch.py") in launcher
    entry = ast.parse((DEPLOY / "flex-template" / "launch.py").read_text())
    imported = {(node.module, alias.name) for node in ast.walk(entry) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert ("inference_pipeline.jobs.deploy", "flex_template_main") in imported and callable(flex_template_main)


def locked() -> dict[str, tuple[str, list[str]]]:
    """deploy/requirements.lock: canonical name -> (version, hashes)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if pin:
            name = canonicalize_name(pin.group(1))
            pins[name] = (pin.group(2), [])
        elif name and "--hash=sha256:" in line:
            pins[name][1].append(line.split("--hash=sha256:")[1].split()[0])
    return pins


def requires(requirement: Requirement) -> list[Requirement]:
    """What the installed ``requirement`` needs with its extras, on this platform (the image's: linux, 3.11)."""
    found = []
    for text in metadata.requires(requirement.name) or []:
        needed = Requirement(text)
        if needed.marker is None or any(needed.marker.evaluate({"extra": extra})
                                         for extra in ("", *requirement.extras)):
            found.append(needed)
    return found


def test_the_lock_pins_every_dependency_with_hashes_at_the_tested_versions():
    import tomllib

    pins = locked()
    assert all(len(hashes) >= 1 and all(len(h) == 64 for h in hashes) for _, hashes in pins.values())
    wanted = [Requirement(text) for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dependencies"]]
    for requirement in wanted:  # each dependency and what it requires with the extras named, pinned satisfyingly
        for needed in [requirement, *requires(requirement)]:
            name = canonicalize_name(needed.name)
            assert name in pins, f"{needed.name} is not in deploy/requirements.lock: run deploy/lock.sh"
            assert needed.specifier.contains(pins[name][0], prereleases=True), (needed, pins[name][0])
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version.split("+")[0]
                 for dist in metadata.distributions()}
    differing = {name: (version, installed[name]) for name, (version, _) in pins.items()
                 if name in installed and installed[name] != version}
    assert not differing, f"locked vs installed in .venv (run deploy/lock.sh): {differing}"
    assert pins["torch"][0] == metadata.version("torch").split("+")[0]
    cuda = [name for name in pins if name.startswith("nvidia-cuda-runtime")]
    assert cuda, "torch is locked without its CUDA runtime: not the index's CUDA build"
