"""MLTransform over feature batches: fitted once in training (write mode), applied to whole batches of rows after.

Fitting is MLTransform's write mode: it analyses the training features and writes the artifacts (the tf.Transform
graph with the fitted means and variances in it) that are versioned with the model. Applying them is not
MLTransform's read mode, which encodes every element to a tf.Example and decodes it again around the graph (it cost
more than all the rest of the stream's work together). Instead the artifacts' saved tf.Transform graph, the very
graph MLTransform's read mode would run, is loaded once per worker and called on many device batches at once: Beam's
``BatchElements`` gathers up to ``SCALING_ROWS`` rows of a bundle, one call scales them all (about 1 ms plus a few
microseconds per row) and the batches go on as they came. The z-score is elementwise, so the result is bit-identical
to MLTransform's whatever the batching (``tests/features/test_no_skew.py`` proves it against training's write mode).

A scaled batch records which artifacts scaled it (``FeatureBatch.scaled_by``) and the model version they belong to
(``scaled_for``), so the batch is scored by that version and a model can refuse features scaled for another. The
artifacts come from a ``ScalingSource``: fixed ones (``ScalingArtifacts``), or the serving side's current version,
which may change while a stream runs (a promotion): each call of the graph uses the artifacts current at that call.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from features.artifact_trust import trusted_attributes
from features.schema import FeatureBatch, feature_rows
from features.spec import FeatureSpec, scaling_transform

_DEVICE, _BATCH = "__device_id", "__batch"
SCALING_ROWS = 4096  # rows per call of the fitted graph
FIT_BATCH = 1000  # MLTransform's batch size when fitting (TFT tunes it from one otherwise)

Keyed = tuple[str, FeatureBatch]


def load_fitted_scaling(artifact_dir: str | Path, names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    """The fitted tf.Transform graph in ``artifact_dir`` (its attributes allow-listed first) as a function of a
    (rows, features) float32 array, columns in ``names`` order; fails naming any feature the artifacts lack."""
    entry = trusted_attributes(artifact_dir)
    fitted = {column for step in entry["transforms"] for column in step["columns"]}
    missing = [name for name in names if name not in fitted]
    if missing:
        raise ValueError(f"the scaling artifacts in {artifact_dir} do not scale features {missing}")
    layer = tft.TFTransformOutput(entry["artifact_location"]).transform_features_layer()
    names = list(names)

    # Columns in, columns out: each feature is a contiguous row of the input (twice as fast as strided columns).
    @tf.function(input_signature=[tf.TensorSpec([len(names), None], tf.float32)], autograph=False)
    def scale(columns):
        count = tf.shape(columns, out_type=tf.int64)[1]
        indices = tf.stack([tf.range(count), tf.zeros([count], tf.int64)], axis=1)
        shape = tf.stack([count, tf.constant(1, tf.int64)])
        scaled = layer({name: tf.SparseTensor(indices, columns[i], shape) for i, name in enumerate(names)})
        return tf.stack([scaled[name].values for name in names], axis=0)

    def apply(rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(scale(np.ascontiguousarray(rows.T, dtype=np.float32)).numpy().T)

    apply(np.zeros((1, len(names)), dtype=np.float32))  # traces the graph now, not on the first live batch
    return apply


@dataclasses.dataclass(frozen=True)
class ScalingArtifacts:
    """Fitted MLTransform artifacts: their folder, their fingerprint and the model version they belong to. Fixed
    artifacts are their own ``ScalingSource``."""

    artifact_dir: str
    artifact_id: str | None = None
    owner: str | None = None

    def current(self, device_id: str | None = None) -> ScalingArtifacts:
        return self


class ScalingSource(Protocol):
    """Where the scaling step takes a device's artifacts from, at each call (picklable: it travels to the
    workers)."""

    def current(self, device_id: str | None = None) -> ScalingArtifacts: ...


class _ApplyFittedScaling(beam.DoFn):
    """A list of (device_id, FeatureBatch) -> each batch with its features scaled, by one call of the graph per
    artifacts the source currently gives the batches' devices (each artifacts' graph loaded once per worker)."""

    def __init__(self, source: ScalingSource, names: Sequence[str]):
        self._source = source
        self._names = tuple(names)
        self._graphs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    def _graph(self, artifacts: ScalingArtifacts) -> Callable[[np.ndarray], np.ndarray]:
        graph = self._graphs.get(artifacts.artifact_dir)
        if graph is None:
            graph = self._graphs[artifacts.artifact_dir] = load_fitted_scaling(artifacts.artifact_dir, self._names)
        return graph

    def setup(self) -> None:
        self._graph(self._source.current())

    def process(self, elements: list[Keyed]) -> Iterator[Keyed]:
        parts: dict[ScalingArtifacts, list[Keyed]] = {}
        for element in elements:
            parts.setdefault(self._source.current(element[0]), []).append(element)
        for artifacts, part in parts.items():
            rows = np.concatenate([batch.features for _, batch in part])
            scaled = self._graph(artifacts)(rows) if len(rows) else rows.astype(np.float32)
            start = 0
            for device_id, batch in part:
                end = start + len(batch.features)
                yield device_id, dataclasses.replace(batch, features=scaled[start:end],
                                                     scaled_by=artifacts.artifact_id, scaled_for=artifacts.owner)
                start = end


def _to_columns(element: Keyed, names: list[str]) -> dict:
    device_id, batch = element
    columns = {name: batch.features[:, i].tolist() for i, name in enumerate(names)}
    columns[_DEVICE] = device_id
    columns[_BATCH] = dataclasses.replace(batch, features=None)
    return columns


def _from_row(row, names: list[str], scaled_by: str | None) -> Keyed:
    scaled = np.stack([np.asarray(getattr(row, name), dtype=np.float32) for name in names], axis=1)
    return getattr(row, _DEVICE), dataclasses.replace(getattr(row, _BATCH), features=scaled, scaled_by=scaled_by)


@beam.ptransform_fn
def FitScaling(batches: beam.PCollection, spec: FeatureSpec, artifact_dir: str | Path,
               artifact_id: str | None = None):
    """MLTransform's write mode: analyses the (bounded) batches, writes the artifacts to ``artifact_dir`` (which
    must not exist yet) and scales the batches with them."""
    import tensorflow_transform.beam as tft_beam
    from apache_beam.ml.transforms.base import MLTransform

    import features.example_coder_memory  # noqa: F401  (imported for its effect: bounded TFT encoder memory)

    names = spec.feature_names
    columns = batches | "ToColumns" >> beam.Map(_to_columns, names)
    with tft_beam.Context(desired_batch_size=FIT_BATCH):
        scaled = columns | "MLTransform" >> MLTransform(write_artifact_location=str(artifact_dir)).with_transform(
            scaling_transform(spec))
    return scaled | "FromColumns" >> beam.Map(_from_row, names, artifact_id)


@beam.ptransform_fn
def ApplyScaling(batches: beam.PCollection, spec: FeatureSpec, source: ScalingSource):
    """The source's fitted artifacts applied to batches of up to ``SCALING_ROWS`` rows of a bundle."""
    return (batches
            | "BatchRows" >> beam.BatchElements(min_batch_size=SCALING_ROWS, max_batch_size=SCALING_ROWS,
                                                element_size_fn=feature_rows)
            | "ApplyFittedGraph" >> beam.ParDo(_ApplyFittedScaling(source, spec.feature_names))
            .with_output_types(tuple[str, FeatureBatch]))


@beam.ptransform_fn
def ScaleFeatures(batches: beam.PCollection, spec: FeatureSpec, artifacts: str | Path | ScalingSource,
                  fit: bool = False, artifact_id: str | None = None):
    """(device_id, FeatureBatch) -> (device_id, FeatureBatch with z-scored features, ``scaled_by`` their
    fingerprint).

    ``fit=True`` fits and writes the artifacts into the folder ``artifacts`` (``FitScaling``); otherwise they are
    read from the folder ``artifacts`` (fingerprint ``artifact_id``), or from a ``ScalingSource``, and applied
    (``ApplyScaling``).
    """
    if fit:
        return batches | "Fit" >> FitScaling(spec, artifacts, artifact_id)
    if isinstance(artifacts, (str, Path)):
        artifacts = ScalingArtifacts(str(artifacts), artifact_id)
    return batches | "Apply" >> ApplyScaling(spec, artifacts)
