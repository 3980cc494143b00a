"""MQTT deployment config: typed broker settings, secrets from the environment, one payload limit, clear errors."""
import pytest

from inference_pipeline.config import ConfigError, load_config
from inference_pipeline.connectors.base import SinkContext
from inference_pipeline.connectors.mqtt.settings import MqttSettings
from inference_pipeline.connectors.mqtt.sink import MqttSink
from tests.conftest import REPO

CONFIGS = REPO / "configs"
MQTT_CONFIG = CONFIGS / "mqtt.yaml"


def test_the_shipped_mqtt_config_reads_a_persistent_qos1_session_and_publishes_to_its_broker():
    config = load_config(MQTT_CONFIG)
    mqtt = config.source.mqtt
    assert config.source.kind == "mqtt" and mqtt.qos == 1 and not mqtt.clean_start and mqtt.topics
    assert config.sinks["results"].kind == "sqlite"
    context = SinkContext(config.work_path, config.source)
    for name, stream in (("alert_topic", "alerts"), ("dead_letter_topic", "dead_letters")):
        sink = config.sinks[name]
        assert sink.kind == "mqtt" and sink.results == (stream,) and MqttSink(sink, context).broker == mqtt


def test_password_comes_from_the_environment_and_never_shows(monkeypatch):
    monkeypatch.setenv("IOTML_MQTT_PASSWORD", "s3cret")
    config = load_config(MQTT_CONFIG, {"source.mqtt.username": "iotml"})
    assert config.source.mqtt.resolved_password() == "s3cret"
    assert "s3cret" not in repr(config) and "s3cret" not in config.model_dump_json()
    monkeypatch.setenv("BROKER_PW", "other-s3cret")
    assert load_config(MQTT_CONFIG, {"source.mqtt.password_env": "BROKER_PW"}).source.mqtt.resolved_password() == "other-s3cret"


def test_tls_settings_come_from_config_and_mqtts_urls():
    config = load_config(MQTT_CONFIG, {"source.mqtt.port": 8883, "source.mqtt.tls": {"ca_certs": "/etc/iotml/ca.crt"}})
    assert config.source.mqtt.tls.ca_certs == "/etc/iotml/ca.crt"
    settings = MqttSettings.from_url("mqtts://iotml@broker.example/plant?client_id=p")
    assert settings.port == 8883 and settings.tls is not None and settings.username == "iotml"
    private_ca = MqttSettings.from_url("mqtts://broker.example:8884/plant?ca_certs=/etc/iotml/ca.crt&client_id=p")
    assert private_ca.tls.ca_certs == "/etc/iotml/ca.crt" and private_ca.port == 8884
    with pytest.raises(ValueError, match="mqtts://"):
        MqttSettings.from_url("mqtt://broker.example/plant?ca_certs=/etc/iotml/ca.crt&client_id=p")


@pytest.mark.parametrize("overrides, field", [
    ({"source.mqtt.topics": []}, "source.mqtt.topics"),
    ({"source.mqtt.qos": 2}, "source.mqtt.qos"),
    ({"source.mqtt.max_payload_bytes": 1024}, "events.max_payload_bytes"),
    ({"source": {"kind": "replay", "path": "x.jsonl"}}, "sinks.alert_topic.mqtt"),
    ({"sinks.dead_letter_topic": {"kind": "kafka", "topic": "t"}}, "sinks.dead_letter_topic.kind"),
    ({"sinks.alert_topic.results": ["alarms"]}, "sinks.alert_topic.results.0"),
    ({"source.read": {"batch_window": 1}}, "source.read.batch_window"),
])
def test_bad_mqtt_settings_fail_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as error:
        load_config(MQTT_CONFIG, overrides)
    assert field in str(error.value)


def test_pubsub_config_names_subscription_and_topics():
    config = load_config(CONFIGS / "pubsub.yaml")
    assert config.source.kind == "pubsub" and config.source.subscription.startswith("projects/")
    assert config.sinks["alert_topic"].kind == config.sinks["dead_letter_topic"].kind == "pubsub"
    assert config.pipeline_options["runner"] == "DataflowRunner" and not config.dedup.restore_from_sink


def test_from_url_and_coerce():
    s = MqttSettings.from_url("mqtt://ops@broker.local:1884/plant/+/telemetry?client_id=iotml-1")
    assert (s.host, s.port, s.username, s.client_id) == ("broker.local", 1884, "ops", "iotml-1")
    assert s.topics == ("plant/+/telemetry",)
    assert MqttSettings.from_url("mqtts://h/x?client_id=c").port == 8883
    assert MqttSettings.coerce({"client_id": "c", "topics": ["a/#"]}).topics == ("a/#",)
    with pytest.raises(ValueError):
        MqttSettings.coerce({"client_id": "c", "bogus": 1})


@pytest.mark.parametrize("url", ["http://iotml:url-pa55word@broker/x",
                                 "mqtt://iotml:url-pa55word@broker/x?ca_certs=/etc/ca.crt&client_id=c"])
def test_url_errors_never_echo_the_password(url):
    with pytest.raises(ValueError) as error:
        MqttSettings.from_url(url)
    assert "url-pa55word" not in str(error.value)
