"""MQTT source parts that need no broker: settings from a URL or a mapping, and event times read from payloads."""
import pytest

from inference_pipeline.connectors.mqtt.event_time import event_time
from inference_pipeline.connectors.mqtt.settings import MqttSettings


def test_from_url_and_coerce():
    s = MqttSettings.from_url("mqtt://ops@broker.local:1884/plant/+/telemetry?client_id=iotml-1")
    assert (s.host, s.port, s.username, s.client_id) == ("broker.local", 1884, "ops", "iotml-1")
    assert s.topics == ("plant/+/telemetry",)
    assert MqttSettings.from_url("mqtts://h/x?client_id=c").port == 8883
    assert MqttSettings.coerce({"client_id": "c", "topics": ["a/#"]}).topics == ("a/#",)
    with pytest.raises(ValueError):
        MqttSettings.coerce({"client_id": "c", "bogus": 1})


def test_event_time_is_cheap_and_bounded():
    assert event_time(b'{"device_id":"d","ts":1767225600.5}', 1767225601.0, 300) == 1767225600.5
    assert event_time(b'{"ts":"2026-01-01T00:00:00Z"}', 1767225601.0, 300) == 1767225600.0
    assert event_time(b'{"ts":9e99}', 100.0, 300) == 400.0
    assert event_time(b"not json", 100.0, 300) == 100.0
