"""Shared fixtures: a small simulated fleet and one model trained and registered once per session."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Every password the tests use: none may appear in any output, log or log file the suite produces.
TEST_SECRETS = ("plant-secret-42", "not-the-password", "s3cret", "url-pa55word", "env-pa55word")


def _leaked(texts) -> list[str]:
    texts = list(texts)
    return [secret for secret in TEST_SECRETS if any(secret in text for text in texts)]


# `make test` runs the files on two processes (pytest-xdist, one file to one process): the folders whose files run
# longest (notebooks, live integration) go first, so no long file starts last and keeps one process busy alone.
LONG_FIRST = ("notebooks", "integration", "training")


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        folder = item.path.relative_to(REPO / "tests").parts[0]
        return LONG_FIRST.index(folder) if folder in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test whose captured output or logs (all phases, as the teardown report holds them) show a test password
    fails."""
    report = (yield).get_result()
    leaked = _leaked(content for _, content in report.sections) if report.when == "teardown" else []
    if leaked and report.passed:
        report.outcome = "failed"
        report.longrepr = f"test passwords {leaked} appeared in this test's output or logs"


def pytest_sessionfinish(session, exitstatus):
    """The log files tests leave (streams, brokers) must not show a test password either."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or factory._basetemp is None:
        return
    for log in factory.getbasetemp().rglob("*.log"):
        leaked = _leaked([log.read_text(errors="replace")])
        if leaked:
            print(f"\ntest passwords {leaked} appeared in {log}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@dataclasses.dataclass(frozen=True)
class Trained:
    config: object
    data: object
    run: object
    version: object


# The network model over window statistics (configs/local.yaml's default is the per-device detector): what the
# handler, serving and registry tests exercise, since every handler kind serves it.
AUTOENCODER = {"training.model": "autoencoder", "features.stats": ["last", "mean", "std", "min", "max", "slope"],
               "features.lags": 0}


def small_config(work_dir: Path, detector: bool = False, **overrides):
    """configs/local.yaml on a small fleet, with the autoencoder unless ``detector`` (the config's own model)."""
    from inference_pipeline.config import load_config

    base = {"work_dir": str(work_dir), "simulation.devices": 4, "simulation.duration_s": 900,
            "simulation.train_duration_s": 1800, "training.epochs": 8, **({} if detector else AUTOENCODER)}
    base.update(overrides)
    return load_config(REPO / "configs" / "local.yaml", base)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """Simulate -> train -> register once; tests read (never modify) the result."""
    from inference_pipeline.jobs.main_job import train_simulated

    config = small_config(tmp_path_factory.mktemp("trained"))
    return Trained(config, *train_simulated(config, progress=False))


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory) -> Trained:
    """The small fleet with the default config's model, the per-device residual detector, registered once."""
    from inference_pipeline.jobs.main_job import train_simulated

    config = small_config(tmp_path_factory.mktemp("detector"), detector=True)
    return Trained(config, *train_simulated(config, progress=False))


@pytest.fixture(scope="session")
def trained_forecaster(tmp_path_factory) -> Trained:
    """The same small fleet with the PatchTST forecaster (``training.model: patchtst``, 12 lags), registered once."""
    from inference_pipeline.jobs.main_job import train_simulated

    config = small_config(tmp_path_factory.mktemp("forecaster"), **{
        "training.model": "patchtst", "training.epochs": 4, "features.lags": 12, "model.handler": "transformers",
        "model.uri": "models:/iot-transformer@champion"})
    return Trained(config, *train_simulated(config, progress=False))


ENRICHED = {
    "features.metadata": [{"name": "machine_type", "kind": "category", "categories": ["L", "M", "H"], "default": "M"},
                          {"name": "last_service", "kind": "days_since", "default": 180},
                          {"name": "rated_power_kw", "default": 7.5}],
}


@pytest.fixture(scope="session")
def trained_enriched(tmp_path_factory) -> Trained:
    """The small fleet with device metadata features (the simulator's device table; training joins the file, no
    store needed), registered once."""
    from inference_pipeline.jobs.main_job import train_simulated

    config = small_config(tmp_path_factory.mktemp("enriched"), **ENRICHED)
    return Trained(config, *train_simulated(config, progress=False))


@pytest.fixture(scope="session")
def served_model(trained, tmp_path_factory):
    """``mlflow models serve`` of the trained fixture's registered version (a real model server process; pinned by
    number: a test moves the fixture's champion)."""
    from tests.model_servers import ModelServer

    log = tmp_path_factory.mktemp("model-server") / "serve.log"
    uri = f"models:/{trained.version.name}/{trained.version.version}"
    with ModelServer(uri, trained.config.tracking_uri, log) as server:
        yield server


@pytest.fixture
def stand_in():
    """A local stand-in of the Vertex AI and Cloud Storage APIs, the real clients pointed at it
    (``tests/vertex_stand_in.py``)."""
    from tests.vertex_stand_in import vertex_stand_in

    with vertex_stand_in(staging_bucket="gs://stage-bucket") as server:
        yield server


@pytest.fixture
def project(stand_in):
    """``model.vertex`` of the stand-in, as the settings object."""
    from model_handlers.vertex import VertexProject

    return VertexProject(**stand_in.model_settings())


@pytest.fixture
def vertex_deployment(trained, served_model, stand_in):
    """A local Vertex AI stand-in (``tests/vertex_stand_in.py``) with the trained version uploaded and deployed on an
    endpoint, its predictions answered by ``served_model`` as Vertex forwards them to a custom serving container;
    (stand-in, endpoint)."""
    import requests
    from google.cloud import aiplatform

    def container(instances, parameters):
        answer = requests.post(served_model.url, json={"instances": instances}, timeout=30)
        answer.raise_for_status()
        return answer.json()["predictions"]

    model = aiplatform.Model.upload(
        display_name="iot-anomaly", artifact_uri=str(trained.version.path),
        serving_container_image_uri="europe-docker.pkg.dev/test-project/serving/iot-anomaly:1",
        serving_container_predict_route="/invocations", serving_container_health_route="/ping",
        serving_container_ports=[8080])
    endpoint = aiplatform.Endpoint.create(display_name="line-a")
    endpoint.deploy(model, machine_type="n1-standard-4", min_replica_count=1, max_replica_count=1)
    stand_in.register_predictor(model.name, container)
    yield stand_in, endpoint
