"""Every model version is an MLflow pyfunc model: its MLmodel file names this module as the loader.

``mlflow.pyfunc.load_model(<version folder>)`` (and so ``mlflow models serve``) returns a model whose ``predict``
takes scaled feature rows (a DataFrame with the feature spec's columns: the MLTransform output) and returns, per row,
``raw_score``, ``anomaly_score`` and ``contribution_<sensor>`` (each sensor's share of the score): the same numbers
the streaming handler computes. Each row also names ``transform_id``, the fingerprint of the MLTransform artifacts
the version's model belongs to, so a remote caller can check that it scaled the rows with the same version's
transform (``model_handlers.http_endpoint``). A per-device version (the detector) also needs each row's
``device_id`` and ``ts`` (event time, epoch seconds).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from model_handlers.model_version import ModelVersion

CONTRIBUTION = "contribution_"
TRANSFORM_ID = "transform_id"
DEVICE_ID, TIMESTAMP = "device_id", "ts"  # what a per-device version (the detector) also needs of each row


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
        features = data[self._names].to_numpy(dtype=np.float32)
        if self._model.per_device:
            absent = [name for name in (DEVICE_ID, TIMESTAMP) if name not in data.columns]
            if absent:
                raise ValueError(f"this version scores each row with its device's model: input lacks {absent}")
            output = self._model.score(features, data[DEVICE_ID].to_numpy(), data[TIMESTAMP].to_numpy(np.float64))
        else:
            output = self._model.score(features)
        columns = {"raw_score": output.raw_score, "anomaly_score": output.anomaly_score}
        if output.sensor_contributions is not None:
            columns.update({CONTRIBUTION + name: output.sensor_contributions[:, j].astype(np.float64)
                            for j, name in enumerate(output.sensor_names)})
        columns[TRANSFORM_ID] = output.model.transform_id
        return pd.DataFrame(columns)


def _load_pyfunc(path: str) -> VersionPyfunc:
    return VersionPyfunc(ModelVersion.open(path))
