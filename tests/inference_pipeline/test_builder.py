"""The pipeline builder: malformed events go to dead letters while good events flow; any registered source, sink and
handler kind plugs in with no edit outside its own code; a model version is served only with its own scaling."""
import json
import pickle
import shutil
import sqlite3

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from features.scaling import ScaleFeatures
from features.schema import DeadLetterReason
from inference_pipeline.builder import LOCAL_RUNNER, create_pipeline
from inference_pipeline.config import ConfigError, load_config
from inference_pipeline.connectors.replay import ReplaySettings
from inference_pipeline.connectors.sqlite import SqliteSettings
from inference_pipeline.runtime.run import event_rules, outcome_counts, run_graph, run_pipeline
from inference_pipeline.steps.score import DEAD_LETTERS, _ScoreFn
from model_handlers.model_version import ModelVersion, write_model_version
from model_handlers.torch_handler import TorchAnomalyHandler
from tests import plugin_kinds
from tests.conftest import REPO
from training.feature_pipeline import batch_features, device_batches, run_feature_pipeline
from training.malformed import KINDS, corrupt
from training.simulate import iter_payloads, simulate_fleet, write_frame


def replay_config(trained, stream, db, **source):
    return trained.config.model_copy(update={
        "source": ReplaySettings(path=str(stream), **source),
        "sinks": {"results": SqliteSettings(path=str(db))},
    })


def test_malformed_events_land_in_dead_letters_and_counts_reconcile(trained, tmp_path):
    frame = simulate_fleet(4, 120, seed=trained.config.simulation.seed, start=1767300000.0, fault_rate=0)
    good = list(iter_payloads(frame, trained.version.feature_spec.sensors))
    bad = [corrupt(good[i], kind) for i, kind in enumerate(KINDS)]
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join(bad[:3] + good + bad[3:]) + "\n")
    config = replay_config(trained, stream, tmp_path / "results.db", batch_size=97)
    run_pipeline(config, trained.version, event_rules(config, trained.version, trained.data.devices))

    with sqlite3.connect(tmp_path / "results.db") as db:
        predictions = pd.read_sql_query("SELECT * FROM predictions", db)
        dead = pd.read_sql_query("SELECT * FROM dead_letters", db)
    assert len(predictions) + len(dead) == len(good) + len(bad)
    assert sorted(dead["reason"]) == sorted(KINDS)
    assert set(predictions["event_id"]) == set(frame["event_id"])
    assert predictions["anomaly_score"].between(0, 1).all()
    assert (predictions["model_name"] == trained.version.name).all()
    assert (predictions["model_version"] == trained.version.version).all()
    assert (predictions["processing_time"] >= predictions["received_at"]).all()
    unknown = dead[dead["reason"] == DeadLetterReason.UNKNOWN_DEVICE].iloc[0]
    assert json.loads(unknown["payload"])["device_id"] == "ghost-999" and "ghost-999" in unknown["detail"]
    warming = predictions[predictions["window_fill"] < trained.version.feature_spec.window]
    assert len(warming) == 4 * (trained.version.feature_spec.window - 1) and (warming["is_anomaly"] == 0).all()
    explained = predictions["sensor_contributions"].notna()
    assert (explained == (predictions["is_anomaly"] == 1)).all()


@pytest.fixture
def plugged_kinds(monkeypatch):
    plugin_kinds.register(monkeypatch)


def test_new_source_sink_and_handler_kinds_plug_in_with_no_edit_elsewhere(plugged_kinds, trained, tmp_path):
    frame = simulate_fleet(2, 60, seed=3, start=1767300000.0, fault_rate=0)
    payloads = list(iter_payloads(frame, trained.version.feature_spec.sensors)) + ["{not json"]
    config = load_config(REPO / "configs" / "local.yaml", {
        "work_dir": str(tmp_path), "model": {"handler": "constant", "uri": str(trained.version.path), "score": 0.9},
        "source": {"kind": "list", "payloads": payloads},
        "sinks": {"files": {"kind": "jsonfile", "folder": str(tmp_path)}}})
    graph = create_pipeline(config, trained.version, event_rules(config, trained.version))
    _, result = run_graph(graph)

    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    dead = [json.loads(line) for line in (tmp_path / "dead_letters.jsonl").read_text().splitlines()]
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert len(predictions) == len(frame) and [d["reason"] for d in dead] == ["bad_json"]
    assert {p["model_name"] for p in predictions} == {"constant"} and {p["anomaly_score"] for p in predictions} == {0.9}
    assert {a["device_id"] for a in alerts} == set(frame["device_id"])
    assert outcome_counts(result)["predictions"] == len(frame)


def test_a_model_that_raises_turns_its_batch_into_dead_letters_with_the_event_and_a_one_line_detail(
        plugged_kinds, trained, tmp_path):
    frame = simulate_fleet(2, 40, seed=3, start=1767300000.0, fault_rate=0)
    payloads = list(iter_payloads(frame, trained.version.feature_spec.sensors))
    config = load_config(REPO / "configs" / "local.yaml", {
        "work_dir": str(tmp_path),
        "model": {"handler": "constant", "uri": str(trained.version.path), "score": 0.1, "fail": True},
        "source": {"kind": "list", "payloads": payloads, "batch_size": 25},
        "sinks": {"files": {"kind": "jsonfile", "folder": str(tmp_path)}}})
    run_graph(create_pipeline(config, trained.version, event_rules(config, trained.version)))

    dead = [json.loads(line) for line in (tmp_path / "dead_letters.jsonl").read_text().splitlines()]
    assert not (tmp_path / "predictions.jsonl").exists() and len(dead) == len(frame)
    assert {d["reason"] for d in dead} == {"inference_error"}
    assert {d["detail"] for d in dead} == {"RuntimeError: model exploded while scoring"}
    sent = {json.loads(p)["event_id"]: json.loads(p) for p in payloads}
    for letter in dead:
        event = json.loads(letter["payload"])
        assert event == sent[event["event_id"]] and letter["device_id"] == event["device_id"]


def test_unregistered_kinds_are_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="source.kind"):
        load_config(overrides={"source": {"kind": "list", "payloads": []}})
    with pytest.raises(ConfigError, match="sinks.files.kind"):
        load_config(overrides={"sinks": {"files": {"kind": "jsonfile", "folder": str(tmp_path)}}})


@pytest.fixture(scope="module")
def rescaled_version(trained, tmp_path_factory):
    """The trained version's weights with MLTransform artifacts fitted on another fleet: other scaling."""
    folder = tmp_path_factory.mktemp("rescaled") / "version"
    shutil.copytree(trained.version.path, folder, ignore=shutil.ignore_patterns("transform"))
    spec = trained.version.feature_spec
    other = simulate_fleet(3, 600, seed=99, fault_rate=0)
    other[list(spec.sensors)] *= 1.5
    table = write_frame(other, folder.parent / "other.parquet")
    run_feature_pipeline(table, spec, folder / "transform", folder.parent / "shards", True,
                         PipelineOptions([], runner=LOCAL_RUNNER))
    meta = trained.version.meta
    write_model_version(folder, spec, meta["architecture"], meta["threshold"], {}, meta["name"])
    return ModelVersion.open(folder).with_identity(meta["name"], "rescaled")


def test_a_swap_to_a_version_with_other_scaling_never_scores_old_scaled_features(trained, rescaled_version, tmp_path):
    spec = trained.version.feature_spec
    assert rescaled_version.transform_id != trained.version.transform_id
    frame = simulate_fleet(1, 60, seed=5, fault_rate=0)
    device_id, events = next(device_batches(frame, spec))
    raw = batch_features((device_id, events), spec)[1]
    scaled = {}
    for version in (trained.version, rescaled_version):
        out = tmp_path / f"{version.version}.pickle"
        with beam.Pipeline(options=PipelineOptions([], runner=LOCAL_RUNNER)) as pipeline:
            _ = (pipeline | beam.Create([(device_id, raw)])
                 | ScaleFeatures(spec, version.transform_dir, artifact_id=version.transform_id)
                 | beam.Map(lambda kv, path=str(out): open(path, "wb").write(pickle.dumps(kv[1]))))
        scaled[version.version] = pickle.loads(out.read_bytes())
    old, new = scaled[trained.version.version], scaled["rescaled"]
    assert not np.allclose(old.features, new.features)

    handler = TorchAnomalyHandler(trained.version, device="cpu")
    handler.update_model_path(str(rescaled_version.path))
    model = handler.load_model()
    score = _ScoreFn(threshold=0.5, window=spec.window, sensors=spec.sensors)
    [stale] = handler.run_inference([old], model)
    refused = list(score.process((device_id, stale)))
    assert len(refused) == len(old) and all(out.tag == DEAD_LETTERS for out in refused)
    assert {out.value.reason for out in refused} == {"inference_error"}
    [fresh] = handler.run_inference([new], model)
    [(_, predictions)] = list(score.process((device_id, fresh)))
    assert len(predictions) == len(new)
