"""Source and sink kinds: the config accepts exactly the entries of these two tables (see ``connectors.base``).
Adding a kind is one settings class, one factory and one entry here."""
from __future__ import annotations

from inference_pipeline.connectors.base import SinkFactory, SourceFactory
from inference_pipeline.connectors.bigquery import BigQuerySettings, BigQuerySink
from inference_pipeline.connectors.mqtt.settings import MqttSinkSettings, MqttSourceSettings
from inference_pipeline.connectors.mqtt.sink import MqttSink
from inference_pipeline.connectors.mqtt.source import mqtt_source
from inference_pipeline.connectors.postgres import PostgresSettings, PostgresSink
from inference_pipeline.connectors.pubsub import PubSubSink, PubSubSinkSettings, PubSubSourceSettings, pubsub_source
from inference_pipeline.connectors.replay import ReplaySettings, replay_source
from inference_pipeline.connectors.sqlite import SqliteSettings, SqliteSink

SOURCES: dict[type, SourceFactory] = {
    ReplaySettings: replay_source,
    MqttSourceSettings: mqtt_source,
    PubSubSourceSettings: pubsub_source,
}

SINKS: dict[type, SinkFactory] = {
    SqliteSettings: SqliteSink,
    MqttSinkSettings: MqttSink,
    PubSubSinkSettings: PubSubSink,
    PostgresSettings: PostgresSink,
    BigQuerySettings: BigQuerySink,
}
