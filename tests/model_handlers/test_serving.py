"""Served versions: a promotion is picked up once it passes every check, each batch is scored by the version that
scaled it, and a version that fails a check is refused (the stream keeps its version, the log says why, once)."""
import dataclasses
import logging

import numpy as np
import pytest

from features.schema import EventBatch, FeatureBatch
from model_handlers.contract import error_to_score
from model_handlers.kinds import keyed_handler, served_fleet
from model_handlers.resolve import resolve_model_version
from model_handlers.serving import version_tag
from model_handlers.torch_handler import TorchSettings
from model_handlers.version_router import VersionRouter
from tests.registry_versions import register, variant
from training.register import promote_version

NAME = "swap"


@pytest.fixture
def registry(trained, tmp_path):
    """Versions 1 (champion, the trained one), 2 (its network at four times the threshold), 3 (another window),
    4 (an architecture its weights do not fit) of one registered model."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    source = trained.version
    versions = [source, variant(source, tmp_path / "v2", threshold=4 * source.threshold),
                variant(source, tmp_path / "v3", window=source.feature_spec.window + 5),
                variant(source, tmp_path / "v4", hidden=[7, 3])]
    for version in versions:
        register(tracking, tmp_path, NAME, version)
    settings = TorchSettings(uri=f"models:/{NAME}@champion", tracking_uri=tracking, device="cpu", watch_s=0)
    first = resolve_model_version(settings.uri, tracking, tmp_path / "cache")
    return tracking, served_fleet(settings, first, tracking, tmp_path / "cache").default


def batch(served, tag: str, rows: np.ndarray) -> FeatureBatch:
    n = len(rows)
    events = EventBatch("d", np.asarray([f"{tag}-{i}" for i in range(n)], dtype=object), np.arange(n, dtype=float),
                        np.zeros((n, 1)), np.zeros(n))
    return FeatureBatch(events, rows, np.full(n, 30), scaled_for=tag)


def test_a_promotion_switches_scaling_weights_and_threshold_together(registry):
    tracking, served = registry
    assert served.current().owner == f"{NAME}/1"
    assert served.check_promotion().version == "1"  # the alias has not moved
    promote_version(tracking, NAME, "2")
    now = served.check_promotion()
    assert version_tag(now) == f"{NAME}/2" and now.threshold == 4 * served.first.threshold
    artifacts = served.current()
    assert (artifacts.owner, artifacts.artifact_dir, artifacts.artifact_id) == (
        f"{NAME}/2", str(now.transform_dir), now.transform_id)

    router = VersionRouter(served)
    model = router.load_model()
    dim = len(now.feature_spec.feature_names)
    rows = np.random.default_rng(3).normal(size=(9, dim)).astype(np.float32)
    mixed = [batch(served, f"{NAME}/1", rows[:3]), batch(served, f"{NAME}/2", rows[3:5]),
             batch(served, f"{NAME}/1", rows[5:])]
    results = list(router.run_inference(mixed, model))
    assert [r.example for r in results] == mixed  # order kept
    assert [r.inference.model.version for r in results] == ["1", "2", "1"]
    for result, threshold in zip(results, (served.first.threshold, now.threshold, served.first.threshold)):
        output = result.inference
        assert np.allclose(output.anomaly_score, error_to_score(output.raw_score, threshold))
    again = list(router.run_inference([batch(served, f"{NAME}/2", rows[:3])], model))[0].inference
    assert np.allclose(again.raw_score, results[0].inference.raw_score)  # the same network...
    assert (again.anomaly_score < results[0].inference.anomaly_score).all()  # ...at its own version's threshold


@pytest.mark.parametrize("version, reason", [("3", "feature spec differs from the running graph's: window"),
                                             ("4", "size mismatch")])
def test_a_promotion_that_fails_a_check_is_refused_once_and_the_stream_keeps_its_version(registry, caplog, version,
                                                                                           reason):
    tracking, served = registry
    promote_version(tracking, NAME, version)
    with caplog.at_level(logging.INFO, logger="model_handlers.serving"):
        assert served.check_promotion().version == "1"
        assert served.check_promotion().version == "1"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and f"refused {NAME}/{version}" in refusals[0] and reason in refusals[0]
    assert f"still serving {NAME}/1" in refusals[0]
    assert served.current().owner == f"{NAME}/1"
    promote_version(tracking, NAME, "2")
    assert served.check_promotion().version == "2"


def test_a_kind_refusing_the_first_version_fails_when_the_handler_is_built(registry, trained):
    _, served = registry
    wrong = dataclasses.replace(trained.version, meta={**trained.version.meta, "architecture": {"kind": "mlflow"}})
    with pytest.raises(ValueError, match="model.handler is 'torch'"):
        keyed_handler(served.settings, wrong)
