"""The scoring step on a stream (TestStream): the decision at the threshold, warm-up never anomalous, provenance and
explanations attached, and a batch scaled by another version's transform dead-lettered, never scored."""
import json

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to

from features.schema import EventBatch, FeatureBatch
from features.spec import FeatureSpec
from inference_pipeline.steps.score import ScorePredictions
from model_handlers.contract import ModelId, ModelOutput

MODEL = ModelId("iot-anomaly", "3", "t-3")
SENSORS = ("pressure", "rpm")
SPEC = FeatureSpec(sensors=SENSORS, window=3, stats=("last", "mean"))


def result(device: str, scores: list[float], filled: list[int], scaled_by: str = "t-3") -> tuple:
    n = len(scores)
    events = EventBatch(device, np.asarray([f"{device}-{i}" for i in range(n)], dtype=object),
                        np.arange(n, dtype=float), np.zeros((n, 2)), np.zeros(n))
    batch = FeatureBatch(events, np.zeros((n, 4), dtype=np.float32), np.asarray(filled), scaled_by)
    contributions = np.tile([0.75, 0.25], (n, 1))
    output = ModelOutput(np.asarray(scores) * 2, np.asarray(scores), MODEL, sensor_names=SENSORS,
                         sensor_contributions=contributions)
    return device, PredictionResult(batch, output, str(MODEL))


def run(elements: list[tuple]):
    stream = EventStream()
    for i, element in enumerate(elements):
        stream = stream.add_elements([element]).advance_watermark_to(i + 1)
    options = PipelineOptions([], runner="BundleBasedDirectRunner", streaming=True)
    pipeline = beam.Pipeline(options=options)
    scored = pipeline | stream.advance_watermark_to_infinity() | ScorePredictions(threshold=0.5, spec=SPEC)
    return pipeline, scored


def test_decisions_provenance_and_explanations_per_event():
    pipeline, scored = run([result("a", [0.2, 0.9, 0.7], [1, 2, 3]), result("b", [0.6], [3])])
    columns = ("event_id", "device_id", "is_anomaly", "model_name", "model_version", "sensor_contributions")
    rows = scored.predictions | beam.FlatMap(lambda kv: zip(*(kv[1].records()[c] for c in columns)))
    explained = {"pressure": 0.75, "rpm": 0.25}
    assert_that(rows, equal_to([
        ("a-0", "a", 0, "iot-anomaly", "3", None),
        ("a-1", "a", 0, "iot-anomaly", "3", None),
        ("a-2", "a", 1, "iot-anomaly", "3", explained),
        ("b-0", "b", 1, "iot-anomaly", "3", explained),
    ]), label="Predictions")
    assert_that(scored.dead_letters, equal_to([]), label="NoDeadLetters")
    pipeline.run().wait_until_finish()


def test_features_scaled_by_another_version_are_dead_lettered_not_scored():
    pipeline, scored = run([result("a", [0.9, 0.9], [3, 3], scaled_by="t-2"), result("b", [0.1], [3])])
    letters = scored.dead_letters | beam.Map(
        lambda d: (d.reason, json.loads(d.payload)["event_id"], d.device_id, "t-2" in d.detail))
    assert_that(letters, equal_to([("inference_error", "a-0", "a", True), ("inference_error", "a-1", "a", True)]),
                label="DeadLetters")
    assert_that(scored.predictions | beam.Map(lambda kv: kv[0]), equal_to(["b"]), label="Predictions")
    pipeline.run().wait_until_finish()


def test_a_score_the_model_could_not_compute_is_certainly_anomalous_never_nan():
    pipeline, scored = run([result("a", [float("nan"), 0.1, float("inf")], [3, 3, 3])])
    rows = scored.predictions | beam.FlatMap(
        lambda kv: zip(kv[1].anomaly_score.tolist(), kv[1].is_anomaly.tolist(), np.isfinite(kv[1].raw_score).tolist()))
    assert_that(rows, equal_to([(1.0, 1, True), (0.1, 0, True), (1.0, 1, True)]))
    pipeline.run().wait_until_finish()
