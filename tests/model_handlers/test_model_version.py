"""A model version is one unit: weights, MLTransform artifacts, threshold and feature spec travel together, its
transform has a fingerprint, and it is a loadable MLflow pyfunc model giving the streaming handler's scores."""
import mlflow
import numpy as np
import pandas as pd

from model_handlers.model_version import ModelVersion, transform_fingerprint
from model_handlers.torch_handler import TorchAnomalyHandler


def test_a_version_holds_weights_transform_spec_threshold_and_mlmodel(trained):
    files = {p.name for p in trained.version.path.iterdir()}
    assert {"model.safetensors", "model.json", "transform", "MLmodel"} <= files
    reopened = ModelVersion.open(trained.version.path)
    assert reopened.feature_spec == trained.version.feature_spec and reopened.threshold > 0
    assert reopened.transform_id == transform_fingerprint(reopened.transform_dir)


def test_the_transform_fingerprint_changes_with_the_artifacts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "attributes.json").write_text('{"mean": 1}')
    before = transform_fingerprint(tmp_path)
    (tmp_path / "a" / "attributes.json").write_text('{"mean": 2}')
    assert transform_fingerprint(tmp_path) != before


def test_every_version_loads_as_an_mlflow_pyfunc_with_the_handlers_scores(trained):
    spec = trained.version.feature_spec
    rows = np.random.default_rng(3).normal(size=(20, len(spec.feature_names))).astype(np.float32)
    pyfunc = mlflow.pyfunc.load_model(str(trained.version.path))
    assert pyfunc.metadata.get_input_schema().input_names() == spec.feature_names
    scored = pyfunc.predict(pd.DataFrame(rows, columns=spec.feature_names))
    model = TorchAnomalyHandler(trained.version, device="cpu").load_model()
    expected = model.score(rows)
    assert np.allclose(scored["raw_score"], expected.raw_score, rtol=1e-6)
    assert np.allclose(scored["anomaly_score"], expected.anomaly_score, rtol=1e-6)


def test_a_registered_version_loads_from_the_registry_as_pyfunc(trained):
    mlflow.set_tracking_uri(trained.config.tracking_uri)
    mlflow.set_registry_uri(trained.config.tracking_uri)  # another fixture's registration may have moved it
    pyfunc = mlflow.pyfunc.load_model(trained.config.model.uri)
    spec = trained.version.feature_spec
    scored = pyfunc.predict(pd.DataFrame(np.zeros((2, len(spec.feature_names)), dtype=np.float32),
                                         columns=spec.feature_names))
    contributions = [f"contribution_{name}" for name in spec.channels]
    assert list(scored.columns) == ["raw_score", "anomaly_score", *contributions, "transform_id"]
    assert scored["anomaly_score"].between(0, 1).all() and set(scored["transform_id"]) == {trained.version.transform_id}
    assert np.allclose(scored[contributions].sum(axis=1), 1.0, atol=1e-5)
