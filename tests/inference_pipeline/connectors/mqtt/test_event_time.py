"""Event times read from MQTT payloads without a JSON parse: cheap, and bounded so one bad clock cannot push the
watermark into the future."""
from inference_pipeline.connectors.mqtt.event_time import event_time


def test_event_time_is_cheap_and_bounded():
    assert event_time(b'{"device_id":"d","ts":1767225600.5}', 1767225601.0, 300) == 1767225600.5
    assert event_time(b'{"ts":"2026-01-01T00:00:00Z"}', 1767225601.0, 300) == 1767225600.0
    assert event_time(b'{"ts":9e99}', 100.0, 300) == 400.0
    assert event_time(b"not json", 100.0, 300) == 100.0
