"""The streaming pipeline, built and never run here: source -> parse (dead letters) -> drop duplicates -> device
features -> MLTransform -> RunInference -> score -> alerts -> sinks.

``create_pipeline`` is pure: it builds the graph for a config and a model version. The local run, the tests, the
benchmarks and the Dataflow launch all call it, and the graph runs on any runner; runtime concerns (local runner
fixes, signals, totals) live in ``inference_pipeline.runtime``.

Every event read comes out once, as a prediction or a dead letter; a redelivered copy of an event already let
through comes out as a duplicate instead (counted, never predicted twice).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from features.scaling import ScaleFeatures
from features.schema import DeadLetter, EventRules
from features.streaming import DeviceFeatures
from inference_pipeline.config import Config
from inference_pipeline.connectors.base import Sink, Source
from inference_pipeline.connectors.kinds import SOURCES
from inference_pipeline.results import TABLES
from inference_pipeline.steps.alerts import AlertSettings, DebounceAlerts
from inference_pipeline.steps.dedup import DropDuplicates
from inference_pipeline.steps.metrics import ReportLiveMetrics
from inference_pipeline.steps.parse import ParseEvents
from inference_pipeline.steps.score import ScorePredictions, batch_dead_letters
from model_handlers.kinds import keyed_handler
from model_handlers.model_version import ModelVersion
from model_handlers.settings import ModelSettings

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@dataclasses.dataclass(frozen=True)
class Outputs:
    """The pipeline's result collections, for sinks and tests.

    Dead letters stay in parts by origin (``Parse``, ``Inference``, ``Score``) rather than flattened: the local
    runner materializes a multi-input Flatten, which would hold a live stream's dead letters back until the end.
    """

    predictions: beam.PCollection
    alerts: beam.PCollection
    dead_letters: dict[str, beam.PCollection]
    duplicates: beam.PCollection


@dataclasses.dataclass(frozen=True)
class StreamingGraph:
    """A built pipeline: the graph, its result collections and the source it reads."""

    pipeline: beam.Pipeline
    outputs: Outputs
    source: Source


def _failed_inference(element: tuple[list, tuple], sensors: tuple[str, ...]) -> Iterator[DeadLetter]:
    """A batch the model failed on: every event in it becomes a dead letter, so counts still reconcile. The detail
    is the exception's one-line summary (the last line of its traceback)."""
    batch, (_, _, trace) = element
    detail = trace[-1].strip().replace("\n", " ") if trace else "inference failed"
    for device_id, features in batch:
        yield from batch_dead_letters(features, detail, device_id, sensors)


class ScoreEvents(beam.PTransform):
    """list[RawEvent] -> Outputs: everything between a source and the sinks, for one model version."""

    def __init__(self, version: ModelVersion, rules: EventRules, model: ModelSettings, alerting: AlertSettings,
                 dedup: DropDuplicates):
        super().__init__()
        self._version = version
        self._rules = rules
        self._model = model
        self._alerting = alerting
        self._dedup = dedup

    def expand(self, raws: beam.PCollection) -> Outputs:
        version, spec, alerting = self._version, self._version.feature_spec, self._alerting
        parsed = raws | "ParseEvents" >> ParseEvents(self._rules)
        unique = parsed.events | "DropDuplicates" >> self._dedup
        features = unique.events | "DeviceFeatures" >> DeviceFeatures(spec)
        scaled = features | "ScaleFeatures" >> ScaleFeatures(spec, version.transform_dir,
                                                             artifact_id=version.transform_id)
        inferred, failed = scaled | "RunInference" >> RunInference(
            keyed_handler(self._model, version)).with_exception_handling()
        scored = inferred | "Score" >> ScorePredictions(alerting.threshold, spec)
        alerts = scored.predictions | "Alerts" >> DebounceAlerts(alerting.open_after, alerting.close_after)
        inference_errors = failed.failed_inferences | "InferenceErrors" >> beam.FlatMap(_failed_inference,
                                                                                          spec.sensors)
        dead = {"Parse": parsed.dead_letters, "Inference": inference_errors, "Score": scored.dead_letters}
        return Outputs(scored.predictions, alerts, dead, unique.duplicates)


def drop_duplicates(config: Config, sinks: Mapping[str, Sink], live: bool) -> DropDuplicates:
    """Dedup by event id; a live stream also starts from the ids the first capable sink already predicted."""
    dedup = config.dedup
    restore = None
    if live and dedup.restore_from_sink:
        capable = (sink.predicted_ids(dedup.max_ids_per_device) for name, sink in sinks.items()
                   if "predictions" in config.sinks[name].results)
        restore = next((found for found in capable if found is not None), None)
    return DropDuplicates(dedup.horizon_s, dedup.max_ids_per_device, restore)


def write_outputs(outputs: Outputs, config: Config, sinks: Mapping[str, Sink]) -> None:
    """Each sink writes the result streams its settings name."""
    streams = {"predictions": {"": outputs.predictions}, "alerts": {"": outputs.alerts},
               "dead_letters": outputs.dead_letters}
    for name, sink in sinks.items():
        for stream in config.sinks[name].results:
            for origin, values in streams[stream].items():
                label = "".join(part.title() for part in stream.split("_"))
                values | f"Write{origin}{label}To_{name}" >> sink.write(TABLES[stream])


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


def create_pipeline(config: Config, version: ModelVersion, rules: EventRules,
                    options: PipelineOptions | None = None) -> StreamingGraph:
    """Read, score, write and report, top to bottom; ``options`` default to the config's."""
    source = SOURCES[type(config.source)](config.source, rules)
    sinks = config.build_sinks()
    pipeline = beam.Pipeline(options=options or pipeline_options(config, streaming=source.live))
    raws = pipeline | "ReadEvents" >> source.read
    outputs = raws | "ScoreEvents" >> ScoreEvents(version, rules, config.model, config.alerting,
                                                  drop_duplicates(config, sinks, source.live))
    write_outputs(outputs, config, sinks)
    report_outputs(outputs)
    return StreamingGraph(pipeline, outputs, source)
