"""The mlflow handler serves any MLflow flavour packaged as a version: its input mapped from the feature spec through
the model's signature, its output mapped to the contract; a model it cannot map fails when the pipeline is built."""
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models import infer_signature

from features.schema import EventBatch, FeatureBatch
from model_handlers.contract import error_to_score, probability_to_score
from model_handlers.kinds import keyed_handler
from model_handlers.mlflow_handler import MlflowSettings, mlflow_handler
from model_handlers.model_version import ModelVersion
from model_handlers.torch_handler import TorchSettings, torch_handler
from tests import mlflow_flavours


def batches_of(rows: np.ndarray, sizes: tuple[int, ...]) -> list[FeatureBatch]:
    out, start = [], 0
    for n in sizes:
        events = EventBatch("d", np.arange(n).astype(str).astype(object), np.arange(n, dtype=float),
                            np.zeros((n, 1)), np.zeros(n))
        out.append(FeatureBatch(events, rows[start:start + n], np.full(n, 30)))
        start += n
    return out


def served(version: ModelVersion, rows: np.ndarray, sizes=(7, 1, 12)):
    handler = mlflow_handler(MlflowSettings(uri=str(version.path)), version)
    results = list(handler.run_inference(batches_of(rows, sizes), handler.load_model()))
    assert [len(r.inference) for r in results] == list(sizes)
    assert all(r.model_id == f"{version.name}/{version.version}" for r in results)
    assert all(r.inference.model.transform_id == version.transform_id for r in results)
    return [r.inference for r in results]


def mixed_rows(version, n=20):
    normal, anomalous = mlflow_flavours.scaled_rows(version, n, seed=9)
    return np.concatenate([normal[: n // 2], anomalous[: n // 2]])


def test_a_scikit_learn_classifier_gives_class_probabilities_and_the_anomaly_probability(trained, tmp_path):
    version, classifier = mlflow_flavours.sklearn_classifier(tmp_path / "v", trained.version)
    rows = mixed_rows(version)
    outputs = served(version, rows)
    expected = classifier.predict_proba(pd.DataFrame(rows, columns=version.feature_spec.feature_names))
    got = np.concatenate([o.class_probabilities for o in outputs])
    assert np.allclose(got, expected)
    assert outputs[0].class_names == tuple(classifier.classes_)
    anomalous = 1 - expected[:, list(classifier.classes_).index("normal")]
    assert np.allclose(np.concatenate([o.raw_score for o in outputs]), anomalous)
    assert np.allclose(np.concatenate([o.anomaly_score for o in outputs]), probability_to_score(anomalous, 0.5))
    labels = np.concatenate([o.label for o in outputs])
    assert list(labels[:10]).count("normal") >= 8 and list(labels[10:]).count("anomaly") >= 8


def test_a_pytorch_model_with_a_tensor_signature_takes_every_feature_in_order(trained, tmp_path):
    version, network = mlflow_flavours.pytorch_probability(tmp_path / "v", trained.version)
    rows = mixed_rows(version)
    outputs = served(version, rows)
    with torch.no_grad():
        expected = network(torch.from_numpy(rows)).numpy()[:, 0]
    raw = np.concatenate([o.raw_score for o in outputs])
    assert np.allclose(raw, expected, rtol=1e-5)
    assert np.allclose(np.concatenate([o.anomaly_score for o in outputs]), probability_to_score(expected, 0.4),
                       rtol=1e-5)
    assert outputs[0].class_probabilities is None


def test_a_custom_pyfunc_gets_the_columns_its_signature_names_in_its_order(trained, tmp_path):
    version, columns = mlflow_flavours.custom_score(tmp_path / "v", trained.version)
    rows = mixed_rows(version)
    names = version.feature_spec.feature_names
    outputs = served(version, rows)
    picked = rows[:, [names.index(c) for c in columns]].astype(np.float64)
    expected = (picked ** 2).mean(axis=1)
    assert np.allclose(np.concatenate([o.raw_score for o in outputs]), expected, rtol=1e-6)
    assert np.allclose(np.concatenate([o.anomaly_score for o in outputs]), error_to_score(expected, 4.0),
                       rtol=1e-6)


def test_a_model_without_a_signature_fails_at_start(trained, tmp_path):
    path = tmp_path / "v"
    mlflow.pyfunc.save_model(str(path), python_model=mlflow_flavours.FirstSensorEnergy(),
                             pip_requirements=mlflow_flavours.REQUIREMENTS)
    version = mlflow_flavours._package(path, trained.version, {"output": "score"}, 1.0, "unsigned")
    with pytest.raises(ValueError, match="no input signature"):
        keyed_handler(MlflowSettings(uri=str(path)), version)


def test_columns_the_feature_spec_lacks_are_named_at_start(trained, tmp_path):
    names = trained.version.feature_spec.feature_names
    version, _ = mlflow_flavours.custom_score(tmp_path / "v", trained.version,
                                              [names[0], "humidity_mean", "torque_max"])
    with pytest.raises(ValueError, match=r"\['humidity_mean', 'torque_max'\]"):
        keyed_handler(MlflowSettings(uri=str(version.path)), version)


def test_a_tensor_signature_of_another_width_fails_at_start(trained, tmp_path):
    path = tmp_path / "v"
    network = torch.nn.Linear(3, 1)
    example = np.zeros((2, 3), dtype=np.float32)
    mlflow.pytorch.save_model(network, str(path), input_example=example, pip_requirements=mlflow_flavours.REQUIREMENTS,
                              signature=infer_signature(example, np.zeros((2, 1), dtype=np.float32)))
    version = mlflow_flavours._package(path, trained.version, {"output": "score"}, 1.0, "narrow")
    with pytest.raises(ValueError, match=f"rows of {len(trained.version.feature_spec.feature_names)} features"):
        keyed_handler(MlflowSettings(uri=str(path)), version)


def test_a_bad_output_declaration_fails_at_start_naming_the_field(trained, tmp_path):
    path = tmp_path / "v"
    version, _ = mlflow_flavours.custom_score(path, trained.version)
    for architecture, field in (({"kind": "mlflow", "output": "logits"}, "architecture.output"),
                                ({"kind": "mlflow", "output": "classes", "classes": ["a", "b"],
                                  "normal_class": "ok"}, "architecture.normal_class")):
        changed = ModelVersion(path, {**version.meta, "architecture": architecture}, version.manifest_sha256)
        with pytest.raises(ValueError, match=field):
            keyed_handler(MlflowSettings(uri=str(path)), changed)


def test_a_version_served_by_the_wrong_kind_fails_at_start(trained, tmp_path):
    version, _ = mlflow_flavours.custom_score(tmp_path / "v", trained.version)
    with pytest.raises(ValueError, match="holds a 'mlflow' model"):
        torch_handler(TorchSettings(uri=str(version.path)), version)
    with pytest.raises(ValueError, match="holds a 'autoencoder' model"):
        mlflow_handler(MlflowSettings(uri=str(trained.version.path)), trained.version)


def test_probabilities_map_to_anomaly_scores_with_the_threshold_at_one_half():
    p = np.array([0.0, 0.1, 0.3, 0.65, 1.0, 1.2, -0.1])
    scores = probability_to_score(p, 0.3)
    assert np.allclose(scores, [0.0, 1 / 6, 0.5, 0.75, 1.0, 1.0, 0.0])
