"""Fitted MLTransform artifacts are read without jsonpickle: an attributes.json holding anything but what MLTransform
writes for our scaling step is refused before any of it is unpickled, and genuine artifacts load where they lie."""
import json
import shutil

import jsonpickle
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from features.artifact_trust import (
    ATTRIBUTES,
    TRANSFORMS,
    UntrustedArtifactError,
    trusted_attributes,
)
from features.spec import FeatureSpec, scaling_transform
from inference_pipeline.builder import LOCAL_RUNNER
from training.feature_pipeline import run_feature_pipeline
from training.simulate import SENSORS, simulate_fleet, write_frame

SPEC = FeatureSpec(sensors=SENSORS[:3], window=5)


def _features(table, transform_dir, out_dir, fit):
    shards = run_feature_pipeline(table, SPEC, transform_dir, out_dir, fit, PipelineOptions([], runner=LOCAL_RUNNER))
    return np.concatenate([shard.features for shard in shards])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(table, artifacts, features): genuine artifacts, fitted in one folder and then moved to another."""
    root = tmp_path_factory.mktemp("fitted")
    table = write_frame(simulate_fleet(2, 120, seed=4, fault_rate=0), root / "events.parquet")
    features = _features(table, root / "fitted_here", root / "fit_shards", True)
    moved = (root / "fitted_here").rename(root / "moved_here")
    return table, moved, features


def _tampered(fitted, tmp_path, edit) -> object:
    artifacts = shutil.copytree(fitted[1], tmp_path / "transform")
    attributes = json.loads((artifacts / ATTRIBUTES).read_text())
    edit(attributes)
    (artifacts / ATTRIBUTES).write_text(json.dumps(attributes))
    return artifacts


def test_genuine_artifacts_pass_and_are_read_where_they_lie_now(fitted, tmp_path):
    table, artifacts, fitted_features = fitted
    entry = trusted_attributes(artifacts)
    assert entry["artifact_location"].startswith(str(artifacts))
    assert np.array_equal(_features(table, artifacts, tmp_path / "shards", False), fitted_features)


def test_the_allow_list_is_what_the_scaling_spec_uses():
    step = scaling_transform(SPEC)
    name = f"{type(step).__module__}.{type(step).__qualname__}"
    assert TRANSFORMS == {name: frozenset(vars(step))}


def test_a_py_reduce_payload_is_refused_before_anything_is_unpickled(fitted, tmp_path):
    marker, control = tmp_path / "payload_ran", tmp_path / "payload_ran_under_jsonpickle"

    def payload(path):
        return {"py/reduce": [{"py/function": "builtins.open"}, {"py/tuple": [str(path), "w"]}]}

    jsonpickle.decode(json.dumps(payload(control)))
    assert control.exists(), "the payload must be live: jsonpickle runs it"

    artifacts = _tampered(fitted, tmp_path, lambda attributes: attributes[0]["transforms"][0].update(
        name=payload(marker)))
    with pytest.raises(UntrustedArtifactError) as refused:
        _features(fitted[0], artifacts, tmp_path / "shards", False)
    message = str(refused.value)
    assert str(artifacts / ATTRIBUTES) in message and "'py/reduce'" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("edit, named", [
    (lambda a: a.append({"py/reduce": [{"py/function": "os.system"}, {"py/tuple": ["true"]}]}), "list of one"),
    (lambda a: a[0].update({"py/object": "builtins.eval"}), "'builtins.eval'"),
    (lambda a: a[0]["transforms"][0].update({"py/object": "apache_beam.ml.transforms.tft.TFIDF"}), "TFIDF"),
    (lambda a: a[0]["transforms"].append({"py/function": "os.system"}), "'py/function'"),
    (lambda a: a[0].update(transformed_schema={"x": {"py/type": "builtins.eval"}}), "transformed_schema"),
    (lambda a: a[0]["transforms"][0].update(columns=[{"py/repr": "os/os.system('true')"}]), "columns"),
    (lambda a: a[0].update({"py/state": {}}), "'py/state'"),
    (lambda a: a[0]["transforms"][0].update(extra=1), "attributes"),
    (lambda a: a[0].update(artifact_location="/elsewhere/0a1b2c"), "artifact_location"),
])
def test_anything_mltransform_does_not_write_is_refused(fitted, tmp_path, edit, named):
    artifacts = _tampered(fitted, tmp_path, edit)
    with pytest.raises(UntrustedArtifactError, match="attributes.json: .*refused") as refused:
        trusted_attributes(artifacts)
    assert named in str(refused.value)


def test_missing_or_broken_attributes_are_refused(fitted, tmp_path):
    artifacts = shutil.copytree(fitted[1], tmp_path / "transform")
    (artifacts / ATTRIBUTES).write_text("[{")
    with pytest.raises(UntrustedArtifactError, match="not JSON"):
        trusted_attributes(artifacts)
    (artifacts / ATTRIBUTES).unlink()
    with pytest.raises(UntrustedArtifactError, match="missing"):
        trusted_attributes(artifacts)
