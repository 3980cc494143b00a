"""Run a built pipeline locally until its source ends (replay) or it is stopped (live brokers), and report totals.

Runtime concerns live here, beside the pure builder: the local runner's fixes for long streams, the cyclic garbage
collector moved out of the way of a live stream, a drain on Ctrl-C or SIGTERM (reading stops, the bundles in flight
finish and are acknowledged to the broker, the pipeline ends; whatever the broker still holds is delivered on the
next start), and the final counts.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.runner import PipelineResult

from features.schema import EventRules
from inference_pipeline.builder import LOCAL_RUNNER, StreamingGraph, create_pipeline, local_workers
from inference_pipeline.config import Config
from inference_pipeline.runtime.local_runner import prepare_local_runner
from inference_pipeline.runtime.results_lock import hold_results, sqlite_paths
from inference_pipeline.steps.dedup import METRICS_NAMESPACE
from model_handlers.model_version import ModelVersion
from model_handlers.resolve import resolve_model_version

LOG = logging.getLogger(__name__)


def configured_version(config: Config) -> ModelVersion:
    """The version ``model.uri`` names now, downloaded from its registry (MLflow or Vertex AI) and verified."""
    return resolve_model_version(config.model.uri, config.tracking_uri, config.work_path / "models",
                                 config.model.vertex)


def event_rules(config: Config, version: ModelVersion, devices_file: Path | None = None) -> EventRules:
    """Validation rules for the stream: the version's sensors and the configured device registry (if any)."""
    return config.events.rules(version.feature_spec.sensors, devices_file)


def run_graph(graph: StreamingGraph) -> tuple[float, PipelineResult]:
    """Run a built graph to completion; returns wall seconds and the result (with its metrics).

    It first checks that the source's external system answers (a refused or silent broker fails here, at start).
    On the local runner it applies the runner fixes. It moves the objects built so far (TF, torch, the graph) out of
    the cyclic garbage collector, whose full passes over them paused a live stream for up to half a second.
    """
    started = time.time()
    if graph.source.check is not None:
        graph.source.check()
    if graph.pipeline.options.view_as(StandardOptions).runner == LOCAL_RUNNER:
        prepare_local_runner(local_workers(graph.pipeline.options))
    gc.freeze()
    with drain_on_signals(graph.source.stop) if graph.source.stop else contextlib.nullcontext():
        result = graph.pipeline.run()
        result.wait_until_finish()
    return time.time() - started, result


def run_pipeline(config: Config, version: ModelVersion, rules: EventRules) -> float:
    """Build and run the pipeline to completion; returns wall seconds."""
    return run_graph(create_pipeline(config, version, rules))[0]


def outcome_counts(result: PipelineResult) -> dict[str, int]:
    """The stream's counters: predictions, dead letters and duplicates (redelivered copies dropped)."""
    counts = {"predictions": 0, "dead_letters": 0, "duplicates": 0}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        if counter.key.metric.name in counts:
            counts[counter.key.metric.name] += counter.committed or counter.attempted or 0
    return counts


DEVICE_STATES = ("dedup_states", "window_states", "alert_states")


def most_devices_held(result: PipelineResult) -> int:
    """The most devices any stateful step held state for at once (bounded by ``devices.max_devices``)."""
    found = [distribution.committed or distribution.attempted for distribution in result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE))["distributions"]
        if distribution.key.metric.name in DEVICE_STATES]
    return max((value.max for value in found if value is not None and value.count), default=0)


@contextlib.contextmanager
def drain_on_signals(stop: Callable[[bool], None]) -> Iterator[None]:
    """While inside: the first Ctrl-C or SIGTERM drains the stream (``stop(True)``), a second one aborts."""
    def drain(signum: int, frame: object) -> None:
        if stopping:
            raise KeyboardInterrupt
        stopping.append(signum)
        LOG.info("%s: draining the stream (again to abort)", signal.Signals(signum).name)
        stop(True)

    stopping: list[int] = []
    stop(False)
    previous = {signum: signal.signal(signum, drain) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_stream(config: Config) -> int:
    """``iotml stream``: resolve the model from the registry, run until the source ends or is stopped, log totals.
    Throughout, it holds the results lock of every SQLite sink it writes (``iotml run`` refuses to delete them).
    On Dataflow it checks the launch's requirements, submits the job, prints its id and console URL and returns
    (``runtime.dataflow``)."""
    if config.on_dataflow:
        from inference_pipeline.runtime.dataflow import launch

        print(launch(config).describe())
        return 0
    with hold_results(sqlite_paths(config.sinks, config.work_path)):
        version = configured_version(config)
        rules = event_rules(config, version)
        LOG.info("streaming with %s v%s from %s into %s", version.name, version.version, config.source.kind,
                 ", ".join(f"{name} ({settings.kind})" for name, settings in config.sinks.items()))
        seconds, result = run_graph(create_pipeline(config, version, rules))
    counts = outcome_counts(result)
    LOG.info("finished in %.1f s: %d predictions, %d dead letters, %d duplicates dropped", seconds,
             counts["predictions"], counts["dead_letters"], counts["duplicates"])
    LOG.info("at most %d devices held by any stateful step (devices.max_devices: %d)", most_devices_held(result),
             config.devices.max_devices)
    return 0
