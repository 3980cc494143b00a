"""Per-device rolling-window features in a stream: a stateful DoFn carrying each device's last W - 1 readings."""
from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from features.schema import EventBatch, FeatureBatch
from features.spec import FeatureSpec
from features.window import window_features, window_fill


class _WindowFeaturesFn(beam.DoFn):
    """Keyed by device: features for each batch from the carried history, then keep the newest W - 1 rows.

    The state holds at most W - 1 rows per device (it is overwritten, never grows).
    """

    HISTORY = ReadModifyWriteStateSpec("history", PickleCoder())

    def __init__(self, spec: FeatureSpec):
        self._spec = spec

    def process(
        self, element: tuple[str, EventBatch], history=beam.DoFn.StateParam(HISTORY)
    ) -> Iterator[tuple[str, FeatureBatch]]:
        device_id, batch = element
        past = history.read()
        if past is None:
            past = np.empty((0, len(self._spec.sensors)))
        features = window_features(past, batch.values, self._spec.window, self._spec.stats)
        filled = window_fill(len(past), len(batch), self._spec.window)
        history.write(np.concatenate([past, batch.values])[-(self._spec.window - 1):])
        yield device_id, FeatureBatch(batch, features, filled)


@beam.ptransform_fn
def DeviceFeatures(events: beam.PCollection, spec: FeatureSpec) -> beam.PCollection:
    """(device_id, EventBatch) -> (device_id, FeatureBatch), one feature row per event, in arrival order."""
    return events | "WindowFeatures" >> beam.ParDo(_WindowFeaturesFn(spec)).with_input_types(tuple[str, EventBatch])
