"""Shadow scoring: a challenger version (``model.shadow``) scores the same features as the champion; its predictions
are recorded with its version (``shadow_predictions``) but raise no alerts and count in no reconciliation, since the
champion accounts for every event. A batch the challenger fails on is counted (``shadow_failed_events``) and its
reason logged, never made a dead letter of the stream."""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from features.scaling import ScaleFeatures
from features.schema import DeadLetter
from features.spec import FeatureSpec
from inference_pipeline.steps.score import ScorePredictions
from model_handlers.serving import ServedVersions
from model_handlers.version_router import keyed_router

LOG = logging.getLogger(__name__)
MAX_LOGGED_REASONS = 100


class _CountFailures(beam.DoFn):
    """A failed challenger batch, or an event its scoring refused: counted, each distinct reason logged once."""

    def __init__(self):
        self._failed = Metrics.counter("iotml", "shadow_failed_events")
        self._logged: set[str] = set()

    def process(self, element) -> None:
        if isinstance(element, DeadLetter):
            events, reason = 1, element.detail
        else:
            batch, (_, _, trace) = element
            events, reason = sum(len(features) for _, features in batch), trace[-1].strip() if trace else "failed"
        self._failed.inc(events)
        if reason not in self._logged and len(self._logged) < MAX_LOGGED_REASONS:
            self._logged.add(reason)
            LOG.warning("shadow model failed on %d events: %s", events, reason)


class _CountPredictions(beam.DoFn):
    def __init__(self):
        self._predicted = Metrics.counter("iotml", "shadow_predictions")

    def process(self, element):
        self._predicted.inc(len(element[1]))
        yield element


class ShadowScores(beam.PTransform):
    """(device_id, unscaled FeatureBatch) -> (device_id, PredictionBatch) by the challenger ``served``: its own
    MLTransform artifacts, weights and threshold; ``threshold``: the alerting threshold, the champion's too."""

    def __init__(self, served: ServedVersions, spec: FeatureSpec, threshold: float):
        super().__init__()
        self._served = served
        self._spec = spec
        self._threshold = threshold

    def expand(self, features: beam.PCollection) -> beam.PCollection:
        scaled = features | "ScaleFeatures" >> ScaleFeatures(self._spec, self._served)
        inferred, failed = scaled | "RunInference" >> RunInference(keyed_router(self._served)).with_exception_handling()
        scored = inferred | "Score" >> ScorePredictions(self._threshold, self._spec)
        failed.failed_inferences | "CountFailedBatches" >> beam.ParDo(_CountFailures())
        scored.dead_letters | "CountRefusedEvents" >> beam.ParDo(_CountFailures())
        return scored.predictions | "CountPredictions" >> beam.ParDo(_CountPredictions())
