"""Run the streaming pipeline on the configured source until it ends (replay) or is stopped (live brokers)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import apache_beam as beam
import pandas as pd

from features.schema import EventRules
from inference_pipeline.config import Config, ConfigError
from inference_pipeline.pipeline import build_pipeline, pipeline_options
from inference_pipeline.sources.replay import ReadReplay
from model_handlers.bundle import ModelBundle
from model_handlers.mlflow_registry import resolve_bundle

LOG = logging.getLogger(__name__)


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
    raise ConfigError(f"source.kind: {source.kind!r} is not available in this build")


def run_pipeline(config: Config, bundle: ModelBundle, rules: EventRules) -> float:
    """Build and run the pipeline to completion; returns wall seconds."""
    started = time.time()
    with beam.Pipeline(options=pipeline_options(config, streaming=config.source.kind != "replay")) as pipeline:
        build_pipeline(pipeline, source_transform(config, rules), bundle, rules, config)
    return time.time() - started


def run_stream(config: Config) -> int:
    """``iotml stream``: resolve the model from the registry, run, report counts."""
    bundle = resolve_bundle(config.model.uri, config.tracking_uri, config.work_path / "models")
    rules = event_rules(config, bundle)
    LOG.info("streaming with %s v%s into %s", bundle.name, bundle.version, config.sink_path)
    seconds = run_pipeline(config, bundle, rules)
    LOG.info("finished in %.1f s; results in %s", seconds, config.sink_path)
    return 0
