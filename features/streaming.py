"""Per-device rolling-window features in a stream: a stateful DoFn carrying each device's ``WindowState``.

Each batch of a device is featurised in event-time order with ``FeatureSpec.featurise`` (the rule training applies
too). An event older than the newest one the device has already featurised is late (a publisher resending after a
reconnect can reorder its events): it is scored against the device's current window without entering it, flagged
``late``, so the window never mixes in the past, and the live path never waits for stragglers. The state holds at
most W - 1 rows per device (it is overwritten, never grows).

On a runner whose state dies with the process (the local runner), ``restore`` seeds a device's state the first time
the device is seen, from what a sink persisted with the device's last predictions. A notice from the stream's device
roster passes through as a batch without rows; an expiry notice drops the device's window first.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

import features.coders  # noqa: F401  (imported for its effect: the batches' coders are registered)
from features.schema import DeviceNotice, EventBatch, FeatureBatch, concat_batches
from features.spec import FeatureSpec
from features.window import WindowState

# device_id -> the window state persisted with its last predictions (None: none persisted).
RestoreWindow = Callable[[str], "WindowState | None"]


class _WindowFeaturesFn(beam.DoFn):
    WINDOW = ReadModifyWriteStateSpec("window", PickleCoder())

    def __init__(self, spec: FeatureSpec, restore: RestoreWindow | None):
        self._spec = spec
        self._restore = restore
        self._states = Metrics.distribution("iotml", "window_states")
        self._live = 0

    def _initial(self, device_id: str) -> WindowState:
        """The persisted window, when it fits this spec (a model swap may change the sensors or the window)."""
        restored = self._restore(device_id) if self._restore is not None else None
        if restored is None or restored.tail.shape[1] != len(self._spec.channels):
            return self._spec.empty_state()
        return WindowState(restored.tail[-(self._spec.window - 1):], restored.newest)

    def process(self, element: tuple[str, EventBatch], window=beam.DoFn.StateParam(WINDOW)) -> Iterator:
        device_id, batch = element
        if batch.notice is not None:
            yield device_id, self._on_notice(batch, window)
            return
        state = window.read()
        if state is None:
            self._live += 1
            self._states.update(self._live)
            state = self._initial(device_id)
        if not np.all(batch.ts[1:] >= batch.ts[:-1]):
            batch = batch.take(np.argsort(batch.ts, kind="stable"))
        late = batch.ts < state.newest
        on_time = batch.take(~late) if late.any() else batch
        out = self._spec.featurise(state, on_time.ts, on_time.values, batch.metadata)
        window.write(out.state)
        if not late.any():
            yield device_id, FeatureBatch(batch, out.features, out.filled, imputed=out.imputed, state=out.state)
            return
        stragglers = batch.take(late)
        scored = [self._spec.featurise(out.state, stragglers.ts[i:i + 1], stragglers.values[i:i + 1], batch.metadata)
                  for i in range(len(stragglers))]
        parts = [out, *scored]
        yield device_id, FeatureBatch(
            concat_batches([on_time, stragglers]), np.concatenate([part.features for part in parts]),
            np.concatenate([part.filled for part in parts]), imputed=np.concatenate([part.imputed for part in parts]),
            state=out.state, late=np.arange(len(batch)) >= len(on_time))

    def _on_notice(self, batch: EventBatch, window) -> FeatureBatch:
        """A roster notice, passed on as a batch without rows (an expiry drops the device's window first)."""
        state = window.read()
        if batch.notice.kind == DeviceNotice.EXPIRE and state is not None:
            window.clear()
            self._live -= 1
        features = np.empty((0, len(self._spec.feature_names)), dtype=np.float32)
        return FeatureBatch(batch, features, np.empty(0, dtype=np.int64),
                            imputed=np.empty((0, len(self._spec.channels)), dtype=bool), state=state)


class DeviceFeatures(beam.PTransform):
    """(device_id, EventBatch) -> (device_id, FeatureBatch): one feature row per event, in event-time order, late
    events last."""

    def __init__(self, spec: FeatureSpec, restore: RestoreWindow | None = None):
        super().__init__()
        self._fn = _WindowFeaturesFn(spec, restore)

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        return events | "WindowFeatures" >> beam.ParDo(self._fn).with_input_types(
            tuple[str, EventBatch]).with_output_types(tuple[str, FeatureBatch])
