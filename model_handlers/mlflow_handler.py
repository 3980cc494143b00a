"""``model.handler: mlflow``: any MLflow model (a pyfunc: scikit-learn, PyTorch, a custom ``PythonModel``, ...) served
as a model version: the version folder is the MLflow model itself, with the version's MLTransform artifacts, feature
spec and threshold beside it (``write_model_version`` with ``architecture={"kind": "mlflow", ...}``).

Beam 2.77 ships handlers per framework (scikit-learn, PyTorch, TensorFlow, ONNX, XGBoost, Hugging Face) but none for
MLflow, and none of them takes our feature batches or returns the model output contract. ``mlflow.pyfunc`` loads
every flavour behind one ``predict``, so this one handler serves them all; what it adds is the mapping both ways:

- **In**, through the model's signature (checked when the pipeline is built, so a mismatch fails at start): a column
  signature names the features it takes (any subset of the spec's, in its own order, each ``float`` or ``double``);
  a tensor signature takes all the spec's features in the spec's order. A model without a signature, or naming
  columns the feature spec lacks, is refused with the names.
- **Out**, by the version's ``architecture.output``: ``score`` (one non-negative number a row, higher = more
  anomalous; the version's threshold maps to anomaly score 0.5, as for the autoencoder), ``probability`` (the
  anomalous class's probability: one column, or the second of two as a binary ``predict_proba`` gives), or
  ``classes`` (one probability per class, named by ``architecture.classes``; the anomaly probability is one minus
  that of ``architecture.normal_class``, the label the most probable class). Probabilities map to the anomaly score
  so that the threshold lands on 0.5 (``contract.probability_to_score``).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

import numpy as np
from pydantic import Field

from model_handlers.contract import ModelId, ModelOutput, error_to_score, probability_to_score
from model_handlers.feature_batch_handler import FeatureBatchHandler
from model_handlers.model_version import MLFLOW_KIND, ModelVersion
from model_handlers.settings import ModelSettings

LOG = logging.getLogger(__name__)
OUTPUTS = ("score", "probability", "classes")
_FLOAT_TYPES = {"float": "float32", "double": "float64"}


class MlflowSettings(ModelSettings):
    """``min/max_batch_size``: feature rows (events) per ``predict`` call, gathered from a bundle's device batches
    (a bundle's last call takes what is left): each call pays MLflow's schema check and the DataFrame, so few large
    ones."""

    handler: Literal["mlflow"] = "mlflow"
    min_batch_size: int = Field(4096, ge=1)
    max_batch_size: int = Field(4096, ge=1)


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """How feature rows become the model's input: ``columns`` (a DataFrame of these spec features, in this order,
    with ``dtypes``) or, when None, one array of every spec feature in ``dtypes[0]``."""

    columns: tuple[str, ...] | None
    indices: tuple[int, ...]
    dtypes: tuple[str, ...]

    def of(self, features: np.ndarray) -> Any:
        if self.columns is None:
            return np.ascontiguousarray(features, dtype=self.dtypes[0])
        import pandas as pd

        return pd.DataFrame({name: features[:, index].astype(dtype, copy=False)
                             for name, index, dtype in zip(self.columns, self.indices, self.dtypes)})


@dataclasses.dataclass(frozen=True)
class ModelOutputMap:
    """How the model's predictions become the output contract (``architecture.output`` and its classes)."""

    output: str
    threshold: float
    classes: tuple[str, ...] = ()
    normal_class: str | None = None

    def of(self, predictions: Any, rows: int, model_id: ModelId) -> ModelOutput:
        values = _as_matrix(predictions, rows)
        if self.output == "classes":
            if values.shape[1] != len(self.classes):
                raise ValueError(f"model returned {values.shape[1]} class probabilities, its version names "
                                 f"{len(self.classes)} classes {list(self.classes)}")
            anomalous = 1.0 - values[:, self.classes.index(self.normal_class)]
            return ModelOutput(anomalous, probability_to_score(anomalous, self.threshold), model_id,
                               class_names=self.classes, class_probabilities=values)
        width = 2 if self.output == "probability" else 1
        if values.shape[1] not in (1, width):
            raise ValueError(f"model returned {values.shape[1]} columns a row; output {self.output!r} takes "
                             f"{' or '.join(map(str, sorted({1, width})))}")
        raw = values[:, -1]
        if self.output == "probability":
            return ModelOutput(raw, probability_to_score(raw, self.threshold), model_id)
        return ModelOutput(raw, error_to_score(np.maximum(raw, 0.0), self.threshold), model_id)


def _as_matrix(predictions: Any, rows: int) -> np.ndarray:
    """A pyfunc's predictions (array, DataFrame, Series, list) as float64 rows x columns."""
    values = np.asarray(predictions.to_numpy() if hasattr(predictions, "to_numpy") else predictions,
                        dtype=np.float64)
    values = values.reshape(len(values), -1) if values.ndim != 1 else values[:, None]
    if len(values) != rows:
        raise ValueError(f"model returned {len(values)} predictions for {rows} rows")
    return values


def model_input(version: ModelVersion) -> ModelInput:
    """The mapping from the version's feature spec to its MLflow model's input signature; ValueError naming what
    does not fit."""
    from mlflow.models import Model

    names = version.feature_spec.feature_names
    signature = Model.load(str(version.path / "MLmodel")).signature
    if signature is None or signature.inputs is None:
        raise ValueError(f"model.uri: the MLflow model in {version.path} has no input signature, so its input cannot "
                         f"be mapped from the feature spec; save it with "
                         f"signature=mlflow.models.infer_signature(<feature rows>, <predictions>)")
    inputs = signature.inputs
    if inputs.is_tensor_spec():
        spec = inputs.inputs[0]
        width = spec.shape[-1] if spec.shape else None
        if len(inputs.inputs) != 1 or width != len(names):
            raise ValueError(f"model.uri: the MLflow model in {version.path} takes tensors of shape "
                             f"{[s.shape for s in inputs.inputs]}; the feature spec gives rows of {len(names)} "
                             f"features (name its columns in the signature to take a subset)")
        return ModelInput(None, tuple(range(len(names))), (np.dtype(spec.type).name,))
    wanted = [column for column in inputs.inputs if column.required or column.name in names]
    missing = [column.name for column in wanted if column.name not in names]
    if missing:
        raise ValueError(f"model.uri: the MLflow model in {version.path} takes columns {missing} that the feature "
                         f"spec lacks; it gives {list(names)}")
    not_float = [f"{column.name} ({_type(column)})" for column in wanted if _type(column) not in _FLOAT_TYPES]
    if not_float:
        raise ValueError(f"model.uri: the MLflow model in {version.path} takes non-float columns {not_float}; "
                         f"features are float or double")
    return ModelInput(tuple(column.name for column in wanted), tuple(names.index(column.name) for column in wanted),
                      tuple(_FLOAT_TYPES[_type(column)] for column in wanted))


def _type(column) -> str:
    """A column spec's type name (``float``, ``double``, ``long``...)."""
    return getattr(column.type, "name", str(column.type))


def output_map(version: ModelVersion) -> ModelOutputMap:
    """The version's output mapping; ValueError naming the field that is wrong."""
    architecture = version.architecture
    output = architecture.get("output")
    if output not in OUTPUTS:
        raise ValueError(f"model.uri: {version.path}'s architecture.output is {output!r}; expected one of {OUTPUTS}")
    classes = tuple(str(name) for name in architecture.get("classes") or ())
    normal = architecture.get("normal_class")
    if output == "classes" and (len(classes) < 2 or normal not in classes):
        raise ValueError(f"model.uri: {version.path}'s output 'classes' needs architecture.classes (two or more) "
                         f"and architecture.normal_class among them; got {list(classes)} and {normal!r}")
    return ModelOutputMap(output, version.threshold, classes, normal)


class MlflowModelHandler(FeatureBatchHandler):
    """Scores FeatureBatches with a version's MLflow pyfunc model: one ``predict`` per RunInference batch."""

    metrics_namespace = "iotml_mlflow"

    def __init__(self, version: ModelVersion, min_batch_size: int = 4096, max_batch_size: int = 4096):
        super().__init__(min_batch_size, max_batch_size)
        self._set_version(version)

    def _set_version(self, version: ModelVersion) -> None:
        kind = version.architecture.get("kind")
        if kind != MLFLOW_KIND:
            raise ValueError(f"model.handler is {MLFLOW_KIND!r} but {version.path} holds a {kind!r} model; set "
                             f"model.handler to the kind that serves it")
        self._input, self._output = model_input(version), output_map(version)
        self._version = version
        self._model_id = ModelId(version.name, version.version, version.transform_id)

    def load_model(self) -> Any:
        import mlflow.pyfunc

        self._version.verify()
        model = mlflow.pyfunc.load_model(str(self._version.path))
        LOG.info("loaded %s (MLflow %s)", self._model_id, ", ".join(model.metadata.flavors))
        return model

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            self._set_version(ModelVersion.open(model_path))

    def score(self, features: np.ndarray, model: Any, device_ids: np.ndarray | None = None,
              times: np.ndarray | None = None) -> ModelOutput:
        return self._output.of(model.predict(self._input.of(features)), len(features), self._model_id)


def mlflow_handler(settings: MlflowSettings, version: ModelVersion) -> MlflowModelHandler:
    return MlflowModelHandler(version, settings.min_batch_size, settings.max_batch_size)
