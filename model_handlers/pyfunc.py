"""Every model version is an MLflow pyfunc model: its MLmodel file names this module as the loader.

``mlflow.pyfunc.load_model(<version folder>)`` (and so ``mlflow models serve``) returns a model whose ``predict``
takes scaled feature rows (a DataFrame with the feature spec's columns: the MLTransform output) and returns
``raw_score`` and ``anomaly_score`` per row: the same numbers the streaming handler computes.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from model_handlers.model_version import ModelVersion


class VersionPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps for a version (on CPU)."""

    def __init__(self, version: ModelVersion):
        import torch

        from model_handlers.torch_model import LoadedModel

        self._names = version.feature_spec.feature_names
        self._model = LoadedModel(version, torch.device("cpu"))

    def predict(self, data: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        missing = [name for name in self._names if name not in data.columns]
        if missing:
            raise ValueError(f"input lacks feature columns {missing[:5]}{'...' if len(missing) > 5 else ''}")
        output = self._model.score(data[self._names].to_numpy(dtype=np.float32))
        return pd.DataFrame({"raw_score": output.raw_score, "anomaly_score": output.anomaly_score})


def _load_pyfunc(path: str) -> VersionPyfunc:
    return VersionPyfunc(ModelVersion.open(path))
