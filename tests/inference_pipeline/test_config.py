import pytest

from inference_pipeline.config import ConfigError, load_config, parse_override


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_default_config_is_valid():
    config = load_config()
    assert config.model.uri == "models:/iot-anomaly@champion"
    assert config.features.window == 30


@pytest.mark.parametrize("text, field", [
    ("features:\n  window: 1\n", "features.window"),
    ("alerting:\n  open_after: zero\n", "alerting.open_after"),
    ("model:\n  uri: nowhere\n", "model.uri"),
    ("source:\n  kind: kafka\n", "source.kind"),
    ("source:\n  kind: mqtt\n", "source"),
    ("sinks:\n  colour: red\n", "sinks.colour"),
    ("features:\n  sensors: [a, a]\n", "features.sensors"),
])
def test_invalid_config_fails_naming_the_field(tmp_path, text, field):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert field in str(error.value)


def test_overrides_replace_fields_by_dotted_path(tmp_path):
    config = load_config(write(tmp_path, "alerting:\n  open_after: 2\n"),
                         dict([parse_override("alerting.open_after=7"), parse_override("work_dir=/tmp/x")]))
    assert config.alerting.open_after == 7 and str(config.work_path) == "/tmp/x"


def test_bad_override_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        parse_override("alerting.open_after")
    with pytest.raises(ConfigError, match=r"^--set features.sensors: the value is not valid YAML \(.*\)$"):
        parse_override("features.sensors=[a, b")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


MQTT_SOURCE = "source:\n  kind: mqtt\n  mqtt: {topics: [t/+], client_id: c, max_inflight: %d}\n"


def test_shipped_mqtt_config_dedup_covers_what_a_broker_resends():
    from inference_pipeline.config import DEFAULT_CONFIG

    config = load_config(DEFAULT_CONFIG.parent / "mqtt.yaml")
    assert config.dedup.max_ids_per_device >= config.source.mqtt.max_inflight


def test_default_mqtt_inflight_fits_the_default_dedup_window(tmp_path):
    config = load_config(write(tmp_path, "source:\n  kind: mqtt\n  mqtt: {topics: [t/+], client_id: c}\n"))
    assert config.dedup.max_ids_per_device >= config.source.mqtt.max_inflight


def test_dedup_window_below_the_mqtt_inflight_window_fails_naming_both_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"dedup\.max_ids_per_device \(2000\) is below source\.mqtt\.max_inflight "
                                          r"\(65535\)"):
        load_config(write(tmp_path, MQTT_SOURCE % 65535))
    with pytest.raises(ConfigError, match="dedup.max_ids_per_device"):
        load_config(write(tmp_path, MQTT_SOURCE % 100), {"dedup.max_ids_per_device": 99})
    config = load_config(write(tmp_path, MQTT_SOURCE % 65535), {"dedup.max_ids_per_device": 65535})
    assert config.source.mqtt.max_inflight == config.dedup.max_ids_per_device == 65535


def test_the_dedup_rule_only_concerns_mqtt_sources(tmp_path):
    assert load_config(write(tmp_path, "dedup: {max_ids_per_device: 1}\n")).dedup.max_ids_per_device == 1


@pytest.mark.parametrize("handler, extra", [("torch", {}), ("mlflow", {}),
                                            ("http_endpoint", {"url": "http://127.0.0.1:5001/invocations"})])
def test_batch_sizes_out_of_order_fail_at_load_naming_both(handler, extra, tmp_path):
    model = {"handler": handler, "uri": str(tmp_path), "min_batch_size": 2048, "max_batch_size": 1024, **extra}
    with pytest.raises(ConfigError, match=r"model: .*min_batch_size \(2048\) must not exceed max_batch_size \(1024\)"):
        load_config(overrides={"model": model})
