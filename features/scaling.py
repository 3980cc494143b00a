"""MLTransform over feature batches: fitted once in training (write mode), applied in streaming (read mode).

Each element is one device batch: a column per feature holding that batch's values, plus the batch itself passed
through untouched, so the TFT graph runs once per batch rather than once per event. A scaled batch records which
artifacts scaled it (``FeatureBatch.scaled_by``), so a model can refuse features scaled for another version.

The TFT context this step needs (its batch size) is entered inside the step, so the graph runs the same wherever it
is built: by default TFT tunes its batch size from one, which splits a live bundle's few device batches over several
calls of ~100 ms fixed cost each.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.ml.transforms.base import MLTransform

import features.example_coder_memory  # noqa: F401  (imported for its effect: bounded TFT encoder memory)
from features.artifact_trust import fitted_transform
from features.schema import FeatureBatch
from features.spec import FeatureSpec, scaling_transform

_DEVICE, _BATCH = "__device_id", "__batch"
SCALING_BATCH = 1000


def _to_columns(element: tuple[str, FeatureBatch], names: list[str]) -> dict:
    device_id, batch = element
    columns = {name: batch.features[:, i].tolist() for i, name in enumerate(names)}
    columns[_DEVICE] = device_id
    columns[_BATCH] = dataclasses.replace(batch, features=None)
    return columns


def _from_row(row, names: list[str], scaled_by: str | None) -> tuple[str, FeatureBatch]:
    scaled = np.stack([np.asarray(getattr(row, name), dtype=np.float32) for name in names], axis=1)
    return getattr(row, _DEVICE), dataclasses.replace(getattr(row, _BATCH), features=scaled, scaled_by=scaled_by)


@beam.ptransform_fn
def ScaleFeatures(batches: beam.PCollection, spec: FeatureSpec, artifact_dir: str | Path, fit: bool = False,
                  artifact_id: str | None = None):
    """(device_id, FeatureBatch) -> (device_id, FeatureBatch with z-scored features, ``scaled_by=artifact_id``).

    ``fit=True`` analyses the (bounded) input and writes the artifacts to ``artifact_dir``, which must not exist yet;
    otherwise the artifacts are read from there, as MLTransform's read mode would but with ``attributes.json``
    allow-listed and never unpickled (``features.artifact_trust``).
    """
    import tensorflow_transform.beam as tft_beam

    names = spec.feature_names
    location = str(artifact_dir)
    transform = (
        MLTransform(write_artifact_location=location).with_transform(scaling_transform(spec))
        if fit
        else fitted_transform(artifact_dir)
    )
    columns = batches | "ToColumns" >> beam.Map(_to_columns, names)
    with tft_beam.Context(desired_batch_size=SCALING_BATCH):
        scaled = columns | "MLTransform" >> transform
    return scaled | "FromColumns" >> beam.Map(_from_row, names, artifact_id)
