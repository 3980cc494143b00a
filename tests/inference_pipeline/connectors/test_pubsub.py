"""Pub/Sub by config: the same pipeline reads a subscription and publishes alerts and dead letters through Beam's
Pub/Sub IO, translated for Dataflow offline (``--dry_run``: nothing is submitted, no credentials are used)."""
from apache_beam.options.pipeline_options import PipelineOptions

from inference_pipeline.builder import create_pipeline
from inference_pipeline.config import load_config
from inference_pipeline.runtime.run import event_rules
from tests.conftest import REPO

CONFIG = REPO / "configs" / "pubsub.yaml"


def test_pubsub_config_translates_for_dataflow_with_pubsub_read_and_writes(trained):
    config = load_config(CONFIG, {"model.uri": str(trained.version.path)})
    rules = event_rules(config, trained.version)
    options = PipelineOptions.from_dictionary({
        **config.pipeline_options, "dry_run": "True", "no_auth": True, "sdk_location": "container",
        "project": "iotml-test-project", "temp_location": "gs://iotml-test-bucket/tmp"})
    pipeline = create_pipeline(config, trained.version, rules, options).pipeline
    pipeline.run().wait_until_finish()

    transforms = pipeline.runner.proto_pipeline.components.transforms.values()
    by_urn: dict[str, list[bytes]] = {}
    for transform in transforms:
        by_urn.setdefault(transform.spec.urn, []).append(transform.spec.payload)
    [read] = by_urn["beam:transform:pubsub_read:v1"]
    assert config.source.subscription.encode() in read
    writes = by_urn["beam:transform:pubsub_write:v1"]
    assert sum(config.sinks["alert_topic"].topic.encode() in payload for payload in writes) == 1
    dead_letter_origins = 3  # parse, inference, score
    assert sum(config.sinks["dead_letter_topic"].topic.encode() in payload for payload in writes) == dead_letter_origins
    names = {transform.unique_name for transform in transforms}
    for step in ("ScoreEvents/ParseEvents", "ScoreEvents/DropDuplicates", "ScoreEvents/RunInference",
                 "ScoreEvents/TrackIncidents"):
        assert step in names
