"""The streaming pipeline: source -> parse (dead letters) -> device features -> MLTransform -> RunInference -> score
-> alerts -> sinks. The same graph runs on the local runner and on Dataflow."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from features.schema import DeadLetter, DeadLetterReason, EventRules, FeatureBatch
from features.scaling import ScaleFeatures
from features.streaming import DeviceFeatures
from inference_pipeline.alerts import DebounceAlerts
from inference_pipeline.config import Config
from inference_pipeline.parse import ParseEvents
from inference_pipeline.scoring import ScorePredictions
from inference_pipeline.sinks.sqlite import WriteAlerts, WriteDeadLetters, WritePredictions
from model_handlers.bundle import ModelBundle
from model_handlers.registry import keyed_handler

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@dataclasses.dataclass(frozen=True)
class Outputs:
    """The pipeline's result collections, for sinks and tests."""

    predictions: beam.PCollection
    alerts: beam.PCollection
    dead_letters: beam.PCollection


def _failed_inference(element: tuple[tuple[str, FeatureBatch] | list, Exception]) -> Iterator[DeadLetter]:
    """A batch the model failed on: every event in it becomes a dead letter, so counts still reconcile."""
    batch, error = element
    for device_id, features in batch:
        events = features.events
        for event_id, received in zip(events.event_ids.tolist(), events.received_at.tolist()):
            yield DeadLetter(DeadLetterReason.INFERENCE_ERROR, f"{type(error).__name__}: {error}", event_id, received,
                             device_id)


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
        features = parsed.events | "DeviceFeatures" >> DeviceFeatures(spec)
        scaled = features | "ScaleFeatures" >> ScaleFeatures(spec, self._bundle.transform_dir)
        inferred, failed = scaled | "RunInference" >> RunInference(
            keyed_handler(self._bundle, config.model)).with_exception_handling()
        predictions = inferred | "Score" >> ScorePredictions(config.alerting.threshold or 0.5, spec.window)
        alerts = predictions | "Alerts" >> DebounceAlerts(config.alerting.open_after, config.alerting.close_after)
        inference_errors = failed.failed_inferences | "InferenceErrors" >> beam.FlatMap(_failed_inference)
        dead = (parsed.dead_letters, inference_errors) | "DeadLetters" >> beam.Flatten()
        return Outputs(predictions, alerts, dead)


def write_outputs(outputs: Outputs, sink_path: Path) -> None:
    """The embedded sinks: one SQLite file."""
    outputs.predictions | "WritePredictions" >> WritePredictions(sink_path)
    outputs.alerts | "WriteAlerts" >> WriteAlerts(sink_path)
    outputs.dead_letters | "WriteDeadLetters" >> WriteDeadLetters(sink_path)


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
    write_outputs(outputs, config.sink_path)
    return outputs
