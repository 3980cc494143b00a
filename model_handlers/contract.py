"""The one contract between the pipeline and any model handler.

A handler's ``run_inference`` yields, per feature batch, ``PredictionResult(example=<the FeatureBatch>,
inference=<ModelOutput>, model_id=str(<ModelId>))``. ``ModelOutput`` always carries a raw score, an anomaly score in
[0, 1] (0.5 is the version's calibrated threshold) and the identity of the model version that produced it; a
defect classifier adds class probabilities and a label, an explainable model per-sensor contributions.

The identity includes the fingerprint of the version's MLTransform artifacts: a feature batch records the transform
that scaled it, and the scoring step refuses (dead-letters) a batch whose scaling is not the model's own, so no model
swap can pair new weights with old scaling.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelId:
    """A model version: registry name, version, and the fingerprint of its MLTransform artifacts."""

    name: str
    version: str
    transform_id: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


@dataclasses.dataclass
class ModelOutput:
    """What a model says about the n rows of one feature batch."""

    raw_score: np.ndarray
    anomaly_score: np.ndarray
    model: ModelId
    class_names: tuple[str, ...] | None = None
    class_probabilities: np.ndarray | None = None
    sensor_names: tuple[str, ...] | None = None
    sensor_contributions: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.raw_score)
        if len(self.anomaly_score) != n:
            raise ValueError(f"anomaly_score has {len(self.anomaly_score)} rows, raw_score {n}")
        for name, names, values in (("class_probabilities", self.class_names, self.class_probabilities),
                                    ("sensor_contributions", self.sensor_names, self.sensor_contributions)):
            if values is not None and (names is None or values.shape != (n, len(names))):
                raise ValueError(f"{name} must be ({n}, {len(names or ())}) with its names given")

    def __len__(self) -> int:
        return len(self.raw_score)

    @property
    def label(self) -> np.ndarray | None:
        """The most probable class per row (classifiers only)."""
        if self.class_probabilities is None:
            return None
        return np.asarray(self.class_names, dtype=object)[self.class_probabilities.argmax(axis=1)]


def error_to_score(error, threshold: float):
    """Map a raw error (non-negative, higher = more anomalous) to an anomaly score in [0, 1): the calibrated threshold
    maps to 0.5."""
    return error / (error + threshold)


def probability_to_score(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Map a probability of the anomalous (failure) class to an anomaly score in [0, 1], piecewise linearly: 0 and 1
    stay, the calibrated threshold maps to 0.5."""
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    return np.where(p <= threshold, p / (2 * threshold), 0.5 + (p - threshold) / (2 * (1 - threshold)))


def split_outputs(sizes: Sequence[int], output: ModelOutput) -> list[ModelOutput]:
    """One model output for a concatenation of batches, cut back into one output per batch."""
    bounds = np.cumsum([0, *sizes])
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        parts.append(dataclasses.replace(
            output, raw_score=output.raw_score[lo:hi], anomaly_score=output.anomaly_score[lo:hi],
            class_probabilities=None if output.class_probabilities is None else output.class_probabilities[lo:hi],
            sensor_contributions=None if output.sensor_contributions is None else output.sensor_contributions[lo:hi]))
    return parts
