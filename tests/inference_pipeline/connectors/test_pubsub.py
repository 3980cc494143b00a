"""Pub/Sub by config: the same pipeline reads a subscription and publishes alerts and dead letters through Beam's
Pub/Sub IO, translated for Dataflow offline (``--dry_run``: nothing is submitted, no credentials are used)."""
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from inference_pipeline.config import load_config
from inference_pipeline.runtime.run import event_rules, source_transform
from inference_pipeline.builder import build_pipeline

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pubsub.yaml"


def test_pubsub_config_translates_for_dataflow_with_pubsub_read_and_writes(trained):
    config = load_config(CONFIG, {"model.uri": str(trained.bundle.path)})
    rules = event_rules(config, trained.bundle)
    options = PipelineOptions.from_dictionary({
        **config.pipeline_options, "dry_run": "True", "no_auth": True, "sdk_location": "container",
        "project": "iotml-test-project", "temp_location": "gs://iotml-test-bucket/tmp"})
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, source_transform(config, rules), trained.bundle, rules, config)
    pipeline.run().wait_until_finish()

    transforms = pipeline.runner.proto_pipeline.components.transforms.values()
    by_urn: dict[str, list[bytes]] = {}
    for transform in transforms:
        by_urn.setdefault(transform.spec.urn, []).append(transform.spec.payload)
    [read] = by_urn["beam:transform:pubsub_read:v1"]
    assert config.source.subscription.encode() in read
    writes = by_urn["beam:transform:pubsub_write:v1"]
    assert sum(config.sinks.alerts.topic.encode() in payload for payload in writes) == 1
    assert sum(config.sinks.dead_letters.topic.encode() in payload for payload in writes) == 2
    names = {transform.unique_name for transform in transforms}
    for step in ("ScoreEvents/ParseEvents", "ScoreEvents/DropDuplicates", "ScoreEvents/RunInference",
                 "ScoreEvents/Alerts"):
        assert step in names
