"""The streaming pipeline: source -> parse (dead letters) -> drop duplicates -> device features -> MLTransform ->
RunInference -> score -> alerts -> sinks. The same graph runs on the local runner and on Dataflow.

Every event read comes out once, as a prediction or a dead letter; a redelivered copy of an event already let
through comes out as a duplicate instead (counted, never predicted twice)."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from features.schema import DeadLetter, DeadLetterReason, EventRules, FeatureBatch
from features.scaling import ScaleFeatures
from features.streaming import DeviceFeatures
from inference_pipeline.alerts import DebounceAlerts
from inference_pipeline.config import Config
from inference_pipeline.dedup import DropDuplicates, PredictedIds
from inference_pipeline.live_metrics import ReportLiveMetrics
from inference_pipeline.parse import ParseEvents
from inference_pipeline.scoring import ScorePredictions
from inference_pipeline.sinks.sqlite import WriteAlerts, WriteDeadLetters, WritePredictions
from inference_pipeline.sinks.topics import (
    PublishMessages, alert_messages, dead_letter_messages, prediction_messages)
from model_handlers.bundle import ModelBundle
from model_handlers.registry import keyed_handler

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@dataclasses.dataclass(frozen=True)
class Outputs:
    """The pipeline's result collections, for sinks and tests.

    Dead letters stay in parts by origin (``Parse``, ``Inference``) rather than flattened: the local runner
    materializes a multi-input Flatten, which would hold a live stream's dead letters back until the stream ends.
    """

    predictions: beam.PCollection
    alerts: beam.PCollection
    dead_letters: dict[str, beam.PCollection]
    duplicates: beam.PCollection


def _failed_inference(element: tuple[tuple[str, FeatureBatch] | list, Exception]) -> Iterator[DeadLetter]:
    """A batch the model failed on: every event in it becomes a dead letter, so counts still reconcile."""
    batch, error = element
    for device_id, features in batch:
        events = features.events
        for event_id, received in zip(events.event_ids.tolist(), events.received_at.tolist()):
            yield DeadLetter(DeadLetterReason.INFERENCE_ERROR, f"{type(error).__name__}: {error}", event_id, received,
                             device_id)


def drop_duplicates(config: Config) -> DropDuplicates:
    """Dedup by event id; an MQTT stream on the local runner also starts from the ids its sink already holds."""
    dedup = config.dedup
    restore = PredictedIds(config.sink_path, dedup.max_ids_per_device) if (
        config.source.kind == "mqtt" and dedup.restore_from_sink) else None
    return DropDuplicates(dedup.horizon_s, dedup.max_ids_per_device, restore)


class ScoreEvents(beam.PTransform):
    """list[RawEvent] -> Outputs: the whole pipeline between a source and the sinks."""

    def __init__(self, bundle: ModelBundle, rules: EventRules, config: Config):
        super().__init__()
        self._bundle = bundle
        self._rules = rules
        self._config = config

    def expand(self, raws: beam.PCollection) -> Outputs:
        spec, config = self._bundle.feature_spec, self._config
        parsed = raws | "ParseEvents" >> ParseEvents(self._rules)
        unique = parsed.events | "DropDuplicates" >> drop_duplicates(config)
        features = unique.events | "DeviceFeatures" >> DeviceFeatures(spec)
        scaled = features | "ScaleFeatures" >> ScaleFeatures(spec, self._bundle.transform_dir)
        inferred, failed = scaled | "RunInference" >> RunInference(
            keyed_handler(self._bundle, config.model)).with_exception_handling()
        predictions = inferred | "Score" >> ScorePredictions(config.alerting.threshold or 0.5, spec.window)
        alerts = predictions | "Alerts" >> DebounceAlerts(config.alerting.open_after, config.alerting.close_after)
        inference_errors = failed.failed_inferences | "InferenceErrors" >> beam.FlatMap(_failed_inference)
        dead = {"Parse": parsed.dead_letters, "Inference": inference_errors}
        return Outputs(predictions, alerts, dead, unique.duplicates)


def write_outputs(outputs: Outputs, config: Config) -> None:
    """The embedded sinks (one SQLite file), and the configured topic sinks."""
    sink_path, sinks = config.sink_path, config.sinks
    outputs.predictions | "WritePredictions" >> WritePredictions(sink_path)
    outputs.alerts | "WriteAlerts" >> WriteAlerts(sink_path)
    topics = [("Alerts", outputs.alerts, sinks.alerts, alert_messages),
              ("Predictions", outputs.predictions, sinks.predictions, prediction_messages)]
    for origin, letters in outputs.dead_letters.items():
        letters | f"Write{origin}DeadLetters" >> WriteDeadLetters(sink_path)
        topics.append((f"{origin}DeadLetters", letters, sinks.dead_letters, dead_letter_messages))
    for name, results, sink, to_messages in topics:
        if sink is not None:
            results | f"Publish{name}" >> PublishMessages(sink.kind, sink.topic, to_messages, config.broker(sink),
                                                          sink.qos)


def report_outputs(outputs: Outputs) -> None:
    """Counters and a periodic log line over every outcome: predictions, dead letters, duplicates."""
    outputs.predictions | "ReportPredictions" >> ReportLiveMetrics()
    for origin, letters in outputs.dead_letters.items():
        letters | f"Report{origin}DeadLetters" >> ReportLiveMetrics()
    outputs.duplicates | "ReportDuplicates" >> ReportLiveMetrics()


def pipeline_options(config: Config, streaming: bool = False) -> PipelineOptions:
    """The config's pass-through Beam options; locally the FnApiRunner (no Prism download attempt)."""
    options = {"runner": LOCAL_RUNNER, **config.pipeline_options}
    if streaming:
        options["streaming"] = True
    return PipelineOptions.from_dictionary(options)


def build_pipeline(pipeline: beam.Pipeline, source: beam.PTransform, bundle: ModelBundle, rules: EventRules,
                   config: Config) -> Outputs:
    """Wire the pipeline top to bottom: read, score, write."""
    raws = pipeline | "ReadEvents" >> source
    outputs = raws | "ScoreEvents" >> ScoreEvents(bundle, rules, config)
    write_outputs(outputs, config)
    report_outputs(outputs)
    return outputs
