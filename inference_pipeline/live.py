"""Run the streaming pipeline on the configured source until it ends (replay) or is stopped (live brokers).

A live MQTT stream runs until Ctrl-C or SIGTERM: reading stops, the bundles in flight finish and are acknowledged
to the broker, the pipeline ends and the totals are logged. Whatever the broker still holds is delivered on the
next start (persistent session).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import pandas as pd
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.runner import PipelineResult

from features.schema import EventRules
from inference_pipeline.config import Config, ConfigError
from inference_pipeline.dedup import METRICS_NAMESPACE
from inference_pipeline.local_runner import prepare_local_runner
from inference_pipeline.pipeline import LOCAL_RUNNER, build_pipeline, pipeline_options
from inference_pipeline.sources.mqtt import ReadFromMqtt, request_stop
from inference_pipeline.sources.pubsub import ReadPubSubEvents
from inference_pipeline.sources.replay import ReadReplay
from model_handlers.bundle import ModelBundle
from model_handlers.mlflow_registry import resolve_bundle

LOG = logging.getLogger(__name__)
SCALING_BATCH = 1000


def event_rules(config: Config, bundle: ModelBundle, devices_file: Path | None = None) -> EventRules:
    """Validation rules for the stream: the bundle's sensors and the configured device registry (if any)."""
    known = set(config.events.known_devices or [])
    for path in filter(None, (config.events.known_devices_file, devices_file)):
        known |= set(pd.read_csv(path)["device_id"].astype(str))
    return EventRules(bundle.feature_spec.sensors, frozenset(known) if known else None, config.events.max_future_s,
                      config.events.max_payload_bytes)


def source_transform(config: Config, rules: EventRules) -> beam.PTransform:
    """The configured source as a PTransform producing list[RawEvent] batches."""
    source = config.source
    if source.kind == "replay":
        if not source.path:
            raise ConfigError("source.path: a replay source needs a file (set it or pass --source)")
        return ReadReplay(source.path, rules.sensors, source.device_column, source.timestamp_column,
                          source.event_id_column, source.batch_size, source.rate)
    if source.kind == "mqtt":
        settings = source.mqtt.model_copy(update={"max_payload_bytes": rules.max_payload_bytes})
        return ReadFromMqtt(settings, source.read)
    if source.kind == "pubsub":
        return ReadPubSubEvents(source.subscription, source.batch_size)
    raise ConfigError(f"source.kind: {source.kind!r} is not available in this build")


def execute(config: Config, bundle: ModelBundle, rules: EventRules) -> tuple[float, PipelineResult]:
    """Build and run the pipeline to completion; returns wall seconds and the result (with its metrics).

    The feature scaling (MLTransform) batches a fixed ``SCALING_BATCH`` device batches per TF call: by default it
    tunes its batch size from one, which splits a live bundle's few device batches over several calls of ~100 ms
    fixed cost each. A live stream also moves the objects built so far (TF, torch, the graph) out of the cyclic
    garbage collector, whose full passes over them paused the stream for up to half a second.
    """
    import tensorflow_transform.beam as tft_beam

    started = time.time()
    live = config.source.kind != "replay"
    options = pipeline_options(config, streaming=live)
    if options.view_as(StandardOptions).runner == LOCAL_RUNNER:
        prepare_local_runner()
    pipeline = beam.Pipeline(options=options)
    with tft_beam.Context(desired_batch_size=SCALING_BATCH):
        build_pipeline(pipeline, source_transform(config, rules), bundle, rules, config)
    if live:
        gc.freeze()
    result = pipeline.run()
    result.wait_until_finish()
    return time.time() - started, result


def run_pipeline(config: Config, bundle: ModelBundle, rules: EventRules) -> float:
    """Build and run the pipeline to completion; returns wall seconds."""
    return execute(config, bundle, rules)[0]


def outcome_counts(result: PipelineResult) -> dict[str, int]:
    """The stream's counters: predictions, dead letters and duplicates (redelivered copies dropped)."""
    counts = {"predictions": 0, "dead_letters": 0, "duplicates": 0}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        if counter.key.metric.name in counts:
            counts[counter.key.metric.name] += counter.committed or counter.attempted or 0
    return counts


@contextlib.contextmanager
def drain_on_signals() -> Iterator[None]:
    """While inside: the first Ctrl-C or SIGTERM drains the MQTT stream (see module doc), a second one aborts."""
    def drain(signum: int, frame: object) -> None:
        if stopping:
            raise KeyboardInterrupt
        stopping.append(signum)
        LOG.info("%s: draining the stream (again to abort)", signal.Signals(signum).name)
        request_stop()

    stopping: list[int] = []
    request_stop(False)
    previous = {signum: signal.signal(signum, drain) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_stream(config: Config) -> int:
    """``iotml stream``: resolve the model from the registry, run until the source ends or is stopped, log totals."""
    bundle = resolve_bundle(config.model.uri, config.tracking_uri, config.work_path / "models")
    rules = event_rules(config, bundle)
    LOG.info("streaming with %s v%s from %s into %s", bundle.name, bundle.version, config.source.kind,
             config.sink_path)
    with drain_on_signals() if config.source.kind == "mqtt" else contextlib.nullcontext():
        seconds, result = execute(config, bundle, rules)
    counts = outcome_counts(result)
    LOG.info("finished in %.1f s: %d predictions, %d dead letters, %d duplicates dropped; results in %s",
             seconds, counts["predictions"], counts["dead_letters"], counts["duplicates"], config.sink_path)
    return 0
