"""The streaming pipeline, built and never run here: source -> (bounded sources on several local workers: shard by
device) -> parse (dead letters) -> drop duplicates -> [device metadata] -> device features -> MLTransform ->
RunInference -> score -> incidents [+ per-minute summaries] -> sinks.

``create_pipeline`` is pure: it builds the graph for a config and a model version. The local run, the tests, the
benchmarks and the Dataflow launch all call it, and the graph runs on any runner; runtime concerns (local runner
fixes, signals, totals) live in ``inference_pipeline.runtime``.

Every event read comes out once, as a prediction or a dead letter; a redelivered copy of an event already let
through comes out as a duplicate instead (counted, never predicted twice).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from features.scaling import ScaleFeatures
from features.schema import DeadLetter, EventRules
from features.streaming import DeviceFeatures
from features.window import WindowState
from inference_pipeline.config import Config
from inference_pipeline.connectors.base import Sink, Source
from inference_pipeline.connectors.feature_stores import EnrichmentSettings
from inference_pipeline.connectors.kinds import SOURCES
from inference_pipeline.results import TABLES, DeviceSnapshot, Restore
from inference_pipeline.steps.alerts import AlertSettings, TrackIncidents
from inference_pipeline.steps.dedup import DedupSettings, DropDuplicates
from inference_pipeline.steps.enrich import EnrichDevices
from inference_pipeline.steps.metrics import ReportLiveMetrics
from inference_pipeline.steps.parse import ParseEvents
from inference_pipeline.steps.roster import FleetSettings
from inference_pipeline.steps.score import ScorePredictions, batch_dead_letters
from inference_pipeline.steps.shadow import ShadowScores
from inference_pipeline.steps.shard import ShardByDevice
from inference_pipeline.steps.summaries import SummarizeMinutes
from model_handlers.device_groups import FleetVersions
from model_handlers.kinds import served_fleet
from model_handlers.model_version import ModelVersion

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"


@dataclasses.dataclass(frozen=True)
class Outputs:
    """The pipeline's result collections, for sinks and tests.

    ``results``: one ``DeviceResults`` per device batch (predictions, incident updates, the device's state);
    ``shadow``: the challenger's (device_id, PredictionBatch) when ``model.shadow`` is set;
    ``minutes``: per-device per-minute summaries (``MinuteSummary``, upserted by key) when asked for.
    Dead letters stay in parts by origin (``Parse``, ``Inference``, ``Score``) rather than flattened: the
    local runner materializes a multi-input Flatten, which would hold a live stream's dead letters back until the end.
    """

    results: beam.PCollection
    dead_letters: dict[str, beam.PCollection]
    duplicates: beam.PCollection
    shadow: beam.PCollection | None = None
    minutes: beam.PCollection | None = None


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
    for _, features in batch:
        yield from batch_dead_letters(features, detail, sensors)


class ScoreEvents(beam.PTransform):
    """list[RawEvent] -> Outputs: everything between a source and the sinks, for the versions ``models`` serves (per
    device group: the one resolved at start, then any its registry alias is promoted to; ``model_handlers.serving``,
    ``model_handlers.device_groups``).

    ``restore`` (a sink's record, for a live stream on a runner whose state dies with the process) seeds each
    device's dedup, window and alerting state the first time the device is seen. ``minutes``: also summarise each
    device's predictions per minute of event time (``steps.summaries``, the ``device_minutes`` stream).
    ``enrichment``: where the device metadata the version's features use comes from (``steps.enrich``; required
    when its spec lists ``metadata`` fields)."""

    def __init__(self, models: FleetVersions, rules: EventRules, alerting: AlertSettings, dedup: DedupSettings,
                 fleet: FleetSettings = FleetSettings(), restore: Restore | None = None, minutes: bool = False,
                 enrichment: EnrichmentSettings | None = None):
        super().__init__()
        self._enrichment = enrichment
        self._models = models
        self._rules = rules
        self._alerting = alerting
        self._dedup = dedup
        self._fleet = fleet
        self._restore = restore
        self._minutes = minutes

    def expand(self, raws: beam.PCollection) -> Outputs:
        models, spec, restore = self._models, self._models.default.first.feature_spec, self._restore
        snapshot = restore.snapshot if restore is not None else None
        parsed = raws | "ParseEvents" >> ParseEvents(self._rules, self._fleet)
        unique = parsed.events | "DropDuplicates" >> DropDuplicates(self._dedup.horizon_s,
                                                                    self._dedup.max_ids_per_device, restore)
        events = unique.events
        if spec.metadata:
            if self._enrichment is None:
                raise ValueError(f"enrichment: model {models.default.first.name} v{models.default.first.version} "
                                 "uses device metadata features: configure where they come from (enrichment.store)")
            events = events | "EnrichDevices" >> EnrichDevices(self._enrichment, spec.metadata)
        features = events | "DeviceFeatures" >> DeviceFeatures(spec, _window_of(snapshot))
        scaled = features | "ScaleFeatures" >> ScaleFeatures(spec, models)
        grouped = scaled | "KeyByModelGroup" >> beam.Map(models.keyed)
        inferred, failed = grouped | "RunInference" >> RunInference(models.handler()).with_exception_handling()
        scored = inferred | "Score" >> ScorePredictions(self._alerting.threshold, spec)
        results = scored.predictions | "TrackIncidents" >> TrackIncidents(self._alerting, snapshot)
        minutes = scored.predictions | "DeviceMinutes" >> SummarizeMinutes() if self._minutes else None
        inference_errors = failed.failed_inferences | "InferenceErrors" >> beam.FlatMap(_failed_inference,
                                                                                          spec.sensors)
        dead = {"Parse": parsed.dead_letters, "Inference": inference_errors, "Score": scored.dead_letters}
        shadow = None if models.shadow is None else features | "Shadow" >> ShadowScores(
            models.shadow, spec, self._alerting.threshold)
        return Outputs(results, dead, unique.duplicates, shadow, minutes)


class _WindowOf:
    """A device's persisted window state, from a snapshot reader (picklable, unlike a lambda)."""

    def __init__(self, snapshot: Callable[[str], DeviceSnapshot | None]):
        self._snapshot = snapshot

    def __call__(self, device_id: str) -> WindowState | None:
        found = self._snapshot(device_id)
        return None if found is None else found.window


def _window_of(snapshot: Callable[[str], DeviceSnapshot | None] | None) -> _WindowOf | None:
    return None if snapshot is None else _WindowOf(snapshot)


def restore_from(config: Config, sinks: Mapping[str, Sink], live: bool) -> Restore | None:
    """What a live stream resumes from: the record of the first sink writing predictions that keeps one."""
    if not (live and config.dedup.restore_from_sink):
        return None
    capable = (sink.restore(config.dedup.max_ids_per_device) for name, sink in sinks.items()
               if "predictions" in config.sinks[name].results)
    return next((found for found in capable if found is not None), None)


def write_outputs(outputs: Outputs, config: Config, sinks: Mapping[str, Sink]) -> None:
    """Each sink writes the result streams its settings name: predictions and alerts together from the device
    results (one write, so a sink can record them in one transaction), dead letters from each origin, a
    challenger's predictions from the shadow, per-minute summaries from ``minutes`` (``wants_minutes``)."""
    for name, sink in sinks.items():
        streams = config.sinks[name].results
        if "device_minutes" in streams:
            if outputs.minutes is None:
                raise ValueError(f"sink {name} writes device_minutes: build ScoreEvents with minutes=True")
            outputs.minutes | f"WriteDeviceMinutesTo_{name}" >> sink.write((TABLES["device_minutes"],))
        if "shadow_predictions" in streams and outputs.shadow is not None:
            outputs.shadow | f"WriteShadowPredictionsTo_{name}" >> sink.write((TABLES["shadow_predictions"],))
        device_tables = tuple(TABLES[stream] for stream in streams if stream in ("predictions", "alerts"))
        if device_tables:
            label = "And".join(table.name.title() for table in device_tables)
            outputs.results | f"Write{label}To_{name}" >> sink.write(device_tables)
        if "dead_letters" in streams:
            for origin, letters in outputs.dead_letters.items():
                letters | f"Write{origin}DeadLettersTo_{name}" >> sink.write((TABLES["dead_letters"],))


def wants_minutes(config: Config) -> bool:
    """Whether any sink writes the per-minute summaries (``device_minutes``), so the graph computes them."""
    return any("device_minutes" in settings.results for settings in config.sinks.values())


def report_outputs(outputs: Outputs) -> None:
    """Counters and a periodic log line over every outcome: predictions, dead letters, duplicates."""
    outputs.results | "ReportPredictions" >> ReportLiveMetrics()
    for origin, letters in outputs.dead_letters.items():
        letters | f"Report{origin}DeadLetters" >> ReportLiveMetrics()
    outputs.duplicates | "ReportDuplicates" >> ReportLiveMetrics()


def pipeline_options(config: Config, streaming: bool = False) -> PipelineOptions:
    """The config's pass-through Beam options; locally the FnApiRunner (no Prism download attempt), its worker
    processes without a user-state cache (see ``runtime.local_runner``: weighing its entries cost more than it
    saved)."""
    options = {"runner": LOCAL_RUNNER, "max_cache_memory_usage_mb": 0, **config.pipeline_options}
    if streaming:
        options["streaming"] = True
    return PipelineOptions.from_dictionary(options)


def local_workers(options: PipelineOptions) -> int:
    """The local runner's worker count (``direct_num_workers``; 1 on any other runner)."""
    if options.view_as(StandardOptions).runner != LOCAL_RUNNER:
        return 1
    return max(options.view_as(DirectOptions).direct_num_workers or 1, 1)


def create_pipeline(config: Config, version: ModelVersion, rules: EventRules,
                    options: PipelineOptions | None = None) -> StreamingGraph:
    """Read, score, write and report, top to bottom; ``options`` default to the config's."""
    source = SOURCES[type(config.source)](config.source, rules)
    sinks = config.build_sinks()
    options = options or pipeline_options(config, streaming=source.live)
    pipeline = beam.Pipeline(options=options)
    raws = pipeline | "ReadEvents" >> source.read
    workers = local_workers(options)
    if workers > 1 and not source.live:
        raws = raws | "ShardByDevice" >> ShardByDevice(rules.max_payload_bytes)
    models = served_fleet(config.model, version, config.tracking_uri, config.work_path / "models")
    outputs = raws | "ScoreEvents" >> ScoreEvents(models, rules, config.alerting, config.dedup, config.devices,
                                                  restore_from(config, sinks, source.live), wants_minutes(config),
                                                  config.enrichment)
    write_outputs(outputs, config, sinks)
    report_outputs(outputs)
    return StreamingGraph(pipeline, outputs, source)
