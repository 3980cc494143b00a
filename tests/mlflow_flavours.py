"""Model versions of the ``mlflow`` kind in three flavours, built over a trained version's feature spec and
MLTransform artifacts the way a data scientist packages one: save the MLflow model (with a signature) into the
version folder, put the fitted transform beside it, then ``write_model_version`` with ``kind: mlflow``."""
from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature

from model_handlers.model_version import TRANSFORM, ModelVersion, write_model_version

# given, not inferred: MLflow infers them by loading the model in a subprocess, seconds per model
REQUIREMENTS = ["scikit-learn", "torch", "pandas"]


def scaled_rows(version: ModelVersion, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows like scaled features (about N(0, 1)) and ``n`` anomalous ones (a large shift on some features)."""
    rng = np.random.default_rng(seed)
    width = len(version.feature_spec.feature_names)
    normal = rng.normal(size=(n, width)).astype(np.float32)
    anomalous = normal + rng.choice([0.0, 6.0], size=(n, width), p=[0.7, 0.3]).astype(np.float32)
    return normal, anomalous


def _package(path: Path, base: ModelVersion, architecture: dict, threshold: float, name: str) -> ModelVersion:
    shutil.copytree(base.transform_dir, path / TRANSFORM)
    return write_model_version(path, base.feature_spec, {"kind": "mlflow", **architecture}, threshold, {}, name)


def sklearn_classifier(path: Path, base: ModelVersion) -> tuple[ModelVersion, object]:
    """A scikit-learn logistic regression (normal vs anomaly), its pyfunc returning ``predict_proba``."""
    from sklearn.linear_model import LogisticRegression

    normal, anomalous = scaled_rows(base, 500)
    names = base.feature_spec.feature_names
    x = pd.DataFrame(np.concatenate([normal, anomalous]), columns=names)
    classifier = LogisticRegression(max_iter=500).fit(x, np.repeat(["normal", "anomaly"], len(normal)))
    mlflow.sklearn.save_model(classifier, str(path), pyfunc_predict_fn="predict_proba", pip_requirements=REQUIREMENTS,
                              signature=infer_signature(x, classifier.predict_proba(x)))
    classes = [str(c) for c in classifier.classes_]
    return _package(path, base, {"output": "classes", "classes": classes, "normal_class": "normal"}, 0.5,
                    "sk-classifier"), classifier


def pytorch_probability(path: Path, base: ModelVersion) -> tuple[ModelVersion, torch.nn.Module]:
    """A PyTorch network (tensor signature over every feature) giving the anomaly probability."""
    normal, anomalous = scaled_rows(base, 500, seed=1)
    width = normal.shape[1]
    network = torch.nn.Sequential(torch.nn.Linear(width, 1), torch.nn.Sigmoid())
    x = torch.from_numpy(np.concatenate([normal, anomalous]))
    y = torch.cat([torch.zeros(len(normal), 1), torch.ones(len(anomalous), 1)])
    optimiser = torch.optim.Adam(network.parameters(), lr=0.05)
    for _ in range(100):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy(network(x), y).backward()
        optimiser.step()
    network.eval()
    with torch.no_grad():
        signature = infer_signature(normal[:5], network(x[:5]).numpy())
    mlflow.pytorch.save_model(network, str(path), signature=signature, input_example=normal[:5],
                              pip_requirements=REQUIREMENTS)
    return _package(path, base, {"output": "probability"}, 0.4, "torch-probability"), network


class FirstSensorEnergy(mlflow.pyfunc.PythonModel):
    """A custom pyfunc: the mean square of the columns it is given (a column signature naming a subset)."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"energy": (model_input.to_numpy(dtype=np.float64) ** 2).mean(axis=1)})


def custom_score(path: Path, base: ModelVersion, columns: list[str] | None = None) -> tuple[ModelVersion, list[str]]:
    """The custom pyfunc over ``columns`` (default: the first sensor's features, in reverse order), output
    ``score`` with threshold 4."""
    spec = base.feature_spec
    columns = columns or [name for name in spec.feature_names if name.startswith(spec.sensors[0])][::-1]
    sample = pd.DataFrame(np.ones((3, len(columns)), dtype=np.float32), columns=columns)
    mlflow.pyfunc.save_model(str(path), python_model=FirstSensorEnergy(), pip_requirements=REQUIREMENTS,
                             signature=infer_signature(sample, FirstSensorEnergy().predict(None, sample)))
    return _package(path, base, {"output": "score"}, 4.0, "custom-energy"), columns
