"""One pipeline, every handler kind: the same graph serves whichever kind ``model.handler`` names (in process, or a
real model server for a remote kind), and its predictions name the version that made them."""
import sqlite3

import pandas as pd
import pytest

from inference_pipeline.config import load_config
from inference_pipeline.runtime.run import event_rules, run_pipeline
from model_handlers.kinds import HANDLERS
from tests import mlflow_flavours
from tests.conftest import REPO
from training.simulate import iter_payloads, simulate_fleet

# a version each kind serves (from the test's fixtures); a new kind adds its own here
VERSIONS = {
    "torch": lambda fixture, path: fixture("trained").version,
    "mlflow": lambda fixture, path: mlflow_flavours.sklearn_classifier(path, fixture("trained").version)[0],
    "transformers": lambda fixture, path: fixture("trained_forecaster").version,
    "http_endpoint": lambda fixture, path: fixture("trained").version,
    "vertex_endpoint": lambda fixture, path: fixture("trained").version,
}
# what a kind needs beyond its version: where a remote kind's model is served
SETTINGS = {
    "http_endpoint": lambda fixture: {"url": fixture("served_model").url},
    "vertex_endpoint": lambda fixture: vertex_endpoint(*fixture("vertex_deployment")),
}


def vertex_endpoint(stand_in, endpoint) -> dict:
    """The settings of an endpoint on the local Vertex AI stand-in."""
    return {"endpoint_id": endpoint.name, "vertex": stand_in.model_settings()}


def test_every_registered_kind_is_exercised():
    assert {settings.model_fields["handler"].default for settings in HANDLERS} == set(VERSIONS)


@pytest.mark.parametrize("kind", sorted(VERSIONS))
def test_the_same_pipeline_serves_every_handler_kind(kind, request, tmp_path):
    version = VERSIONS[kind](request.getfixturevalue, tmp_path / "version")
    frame = simulate_fleet(3, 90, seed=5, start=1767300000.0, fault_rate=0.3)
    payloads = list(iter_payloads(frame, version.feature_spec.sensors)) + ["{broken", '{"device_id": 7}']
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join(payloads) + "\n")
    config = load_config(REPO / "configs" / "local.yaml", {
        "work_dir": str(tmp_path), "model": {"handler": kind, "uri": str(version.path),
                                            **SETTINGS.get(kind, lambda _: {})(request.getfixturevalue)},
        "source": {"kind": "replay", "path": str(stream)},
        "sinks": {"results": {"kind": "sqlite", "path": str(tmp_path / "results.db")}}})
    assert config.model.handler == kind
    run_pipeline(config, version, event_rules(config, version))

    with sqlite3.connect(tmp_path / "results.db") as db:
        predictions = pd.read_sql_query("SELECT * FROM predictions", db)
        dead = pd.read_sql_query("SELECT * FROM dead_letters", db)
    assert len(predictions) + len(dead) == len(payloads) and len(dead) == 2
    assert sorted(predictions["event_id"]) == sorted(frame["event_id"])
    assert (predictions["model_name"] == version.name).all()
    assert predictions["anomaly_score"].between(0, 1).all()
    if version.architecture.get("output") == "classes":
        assert predictions["label"].isin(version.architecture["classes"]).all()
