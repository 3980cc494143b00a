"""Per-device and per-line models: device groups (ids and glob patterns) served by their own registered models in
one stream, through Beam's KeyModelMapping; the rest by the default model. A bad group fails at start, named."""
import json

import numpy as np
import pytest

from inference_pipeline.builder import create_pipeline
from inference_pipeline.config import ConfigError, load_config
from inference_pipeline.runtime.run import event_rules, run_graph
from model_handlers.resolve import resolve_model_version
from tests import plugin_kinds
from tests.conftest import REPO
from tests.registry_versions import register, variant
from training.simulate import iter_payloads, simulate_fleet


@pytest.fixture
def plugged_kinds(monkeypatch):
    plugin_kinds.register(monkeypatch)


@pytest.fixture
def two_lines(trained, tmp_path):
    """Registered models line-a (the trained version) and line-b (its network at four times the threshold)."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register(tracking, tmp_path, "line-a", trained.version)
    line_b = variant(trained.version, tmp_path / "b", threshold=4 * trained.version.threshold)
    register(tracking, tmp_path, "line-b", line_b)
    return tracking


def config_for(tmp_path, tracking: str, groups: dict, payloads: list[str] = ()):
    return load_config(REPO / "configs" / "local.yaml", {
        "work_dir": str(tmp_path / "work"),
        "model": {"handler": "torch", "uri": "models:/line-a@champion", "tracking_uri": tracking, "watch_s": 0,
                  "device": "cpu", "groups": groups, "max_models_per_worker_hint": 2},
        "source": {"kind": "list", "payloads": list(payloads), "batch_size": 50},
        "sinks": {"files": {"kind": "jsonfile", "folder": str(tmp_path)}}})


def test_two_groups_are_served_by_two_models_in_one_stream(plugged_kinds, trained, two_lines, tmp_path):
    frame = simulate_fleet(5, 60, seed=3, start=1767300000.0, fault_rate=0)
    devices = sorted(frame["device_id"].unique())
    line_b = {devices[0], devices[3]}
    pattern = f"{devices[3][:-1]}[{devices[3][-1]}]"  # a glob matching devices[3] only
    payloads = iter_payloads(frame, trained.version.feature_spec.sensors)
    config = config_for(tmp_path, two_lines, {"line-b": {"devices": [devices[0], pattern],
                                                         "uri": "models:/line-b@champion"}}, payloads)
    version = resolve_model_version(config.model.uri, two_lines, config.work_path / "models")
    run_graph(create_pipeline(config, version, event_rules(config, version)))

    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == len({p["event_id"] for p in predictions}) == len(frame)
    served = {device: {p["model_name"] for p in predictions if p["device_id"] == device} for device in devices}
    assert served == {device: {"line-b" if device in line_b else "line-a"} for device in devices}
    thresholds = {"line-a": trained.version.threshold, "line-b": 4 * trained.version.threshold}
    for name, threshold in thresholds.items():
        raw = np.array([p["raw_score"] for p in predictions if p["model_name"] == name])
        score = np.array([p["anomaly_score"] for p in predictions if p["model_name"] == name])
        mine = (score > 0.01) & (score < 0.99)
        assert mine.sum() > 10 and np.allclose(raw[mine] * (1 - score[mine]) / score[mine], threshold, rtol=1e-3)


def test_a_group_with_another_feature_spec_fails_at_start_naming_it(plugged_kinds, trained, two_lines, tmp_path):
    other = variant(trained.version, tmp_path / "w", window=trained.version.feature_spec.window + 1)
    config = config_for(tmp_path, two_lines, {"line-c": {"devices": ["pump-*"], "uri": str(other.path)}})
    version = resolve_model_version(config.model.uri, two_lines, config.work_path / "models")
    with pytest.raises(ValueError, match=r"model.groups.line-c: .* another feature spec .*window"):
        create_pipeline(config, version, event_rules(config, version))


@pytest.mark.parametrize("groups, field", [
    ({"default": {"devices": ["a"], "uri": "models:/m@champion"}}, "model.groups"),
    ({"line-b": {"devices": [], "uri": "models:/m@champion"}}, "model.groups.line-b.devices"),
    ({"line-b": {"devices": ["a"], "uri": "nowhere/at/all"}}, "model.groups.line-b.uri"),
])
def test_bad_groups_fail_at_start_naming_the_field(plugged_kinds, tmp_path, groups, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_for(tmp_path, "sqlite:///x.db", groups)
