"""The deployment config: one YAML file, validated once at start; CLI flags override fields by dotted path."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.spec import FeatureSpec
from inference_pipeline.sources.mqtt_client import MqttSettings, ReadLimits

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"
SIMULATOR_SENSORS = (
    "flow_rate", "pressure", "motor_current", "vibration_rms", "bearing_temp", "motor_temp", "voltage", "rpm",
)


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimulationConfig(Strict):
    """The built-in fleet simulator: training data is fault-free, the replay stream has injected faults."""

    devices: int = Field(12, ge=1, le=10_000)
    duration_s: float = Field(3600.0, gt=0)
    train_duration_s: float = Field(7200.0, gt=0)
    interval_s: float = Field(1.0, gt=0)
    fault_rate: float = Field(1.0, ge=0)
    malformed_fraction: float = Field(0.002, ge=0, lt=0.5)
    seed: int = 7


class TrainingConfig(Strict):
    """Autoencoder training and threshold calibration."""

    hidden: tuple[int, ...] = (32, 8)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=8)
    learning_rate: float = Field(1e-3, gt=0)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    threshold_quantile: float = Field(0.999, gt=0.5, lt=1)
    threshold_margin: float = Field(1.5, ge=1.0)
    seed: int = 0
    device: Literal["auto", "cpu", "gpu"] = "auto"
    experiment: str = "iot-anomaly"


class ModelConfig(Strict):
    """Which model scores the stream: a registry reference and where inference runs."""

    uri: str = "models:/iot-anomaly@champion"
    tracking_uri: str | None = None
    handler: Literal["torch"] = "torch"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    min_batch_size: int = Field(1, ge=1)
    max_batch_size: int = Field(8, ge=1)

    @field_validator("uri")
    @classmethod
    def _registry_uri(cls, uri: str) -> str:
        if uri.startswith("models:/"):
            ref = uri[len("models:/"):]
            if "@" in ref and all(ref.split("@", 1)) or "/" in ref and all(ref.split("/", 1)):
                return uri
            raise ValueError("expected models:/<name>@<alias> or models:/<name>/<version>")
        if not Path(uri).expanduser().is_dir():
            raise ValueError(f"not a registry URI (models:/<name>@<alias>) nor a model bundle folder: {uri}")
        return uri


class SourceConfig(Strict):
    """Where events come from. ``replay``: a CSV/Parquet/JSON-lines file replayed as events; ``mqtt``: a broker
    subscription (``mqtt``: connection, topics, QoS 1 persistent session; ``read``: batching, watermark and stop
    settings); ``pubsub``: a Pub/Sub subscription (``projects/<project>/subscriptions/<name>``)."""

    kind: Literal["replay", "mqtt", "pubsub"] = "replay"
    path: str | None = None
    device_column: str = "device_id"
    timestamp_column: str = "ts"
    event_id_column: str | None = "event_id"
    batch_size: int = Field(2000, ge=1)
    rate: float | None = Field(None, gt=0)
    mqtt: MqttSettings | None = None
    read: ReadLimits = ReadLimits()
    subscription: str | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> "SourceConfig":
        if self.kind == "mqtt" and not self.mqtt:
            raise ValueError("source.mqtt settings are required with kind 'mqtt'")
        if self.kind == "mqtt" and not self.mqtt.topics:
            raise ValueError("source.mqtt.topics: give at least one topic filter")
        if self.kind == "pubsub" and not self.subscription:
            raise ValueError("source.subscription is required with kind 'pubsub'")
        return self


class EventsConfig(Strict):
    """Validation limits applied before features; rejected events go to the dead-letter sink."""

    known_devices: list[str] | None = None
    known_devices_file: str | None = None
    max_future_s: float = Field(300.0, gt=0)
    max_payload_bytes: int = Field(65536, ge=64)


class AlertingConfig(Strict):
    """Debounce: an incident opens after ``open_after`` anomalous predictions in a row, closes after ``close_after`` normal ones."""

    threshold: float | None = Field(None, gt=0, lt=1)
    open_after: int = Field(3, ge=1)
    close_after: int = Field(30, ge=1)


class TopicSinkConfig(Strict):
    """Also publish a result stream as JSON messages to a topic: MQTT (``mqtt``: broker settings, default the MQTT
    source's) or Pub/Sub (``topic``: ``projects/<project>/topics/<name>``)."""

    kind: Literal["mqtt", "pubsub"]
    topic: str = Field(min_length=1)
    mqtt: MqttSettings | None = None
    qos: int = Field(1, ge=0, le=1)


class SinkConfig(Strict):
    """Where results go. ``sqlite``: one embedded database with predictions, alerts and dead_letters tables, always
    written; ``alerts``, ``dead_letters`` and ``predictions`` may in addition go to message topics."""

    kind: Literal["sqlite"] = "sqlite"
    path: str | None = None
    alerts: TopicSinkConfig | None = None
    dead_letters: TopicSinkConfig | None = None
    predictions: TopicSinkConfig | None = None


class DedupConfig(Strict):
    """Redelivered events are dropped by event id: per device, ids within ``horizon_s`` of its newest event time,
    at most ``max_ids_per_device``. ``restore_from_sink``: an MQTT stream restarted after a crash first reads the
    ids already predicted from the SQLite sink, so a redelivered event never gets a second prediction."""

    horizon_s: float = Field(300.0, gt=0)
    max_ids_per_device: int = Field(2000, ge=1)
    restore_from_sink: bool = True


class Config(Strict):
    """One deployment."""

    work_dir: str = "work"
    simulation: SimulationConfig = SimulationConfig()
    features: FeatureSpec = FeatureSpec(sensors=SIMULATOR_SENSORS)
    training: TrainingConfig = TrainingConfig()
    model: ModelConfig = ModelConfig()
    source: SourceConfig = SourceConfig()
    events: EventsConfig = EventsConfig()
    alerting: AlertingConfig = AlertingConfig()
    sinks: SinkConfig = SinkConfig()
    dedup: DedupConfig = DedupConfig()
    pipeline_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_payload_limit_and_sink_brokers(self) -> "Config":
        mqtt = self.source.mqtt
        if mqtt is not None and "max_payload_bytes" in mqtt.model_fields_set and \
                mqtt.max_payload_bytes != self.events.max_payload_bytes:
            raise ValueError("source.mqtt.max_payload_bytes: set the payload limit once, as events.max_payload_bytes")
        for name in ("alerts", "dead_letters", "predictions"):
            sink = getattr(self.sinks, name)
            if sink is not None and sink.kind == "mqtt" and sink.mqtt is None and self.source.mqtt is None:
                raise ValueError(f"sinks.{name}.mqtt: broker settings are required (there is no MQTT source to share)")
        return self

    def broker(self, sink: TopicSinkConfig) -> MqttSettings | None:
        """The MQTT settings a topic sink publishes with: its own, else the MQTT source's."""
        return sink.mqtt or self.source.mqtt

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir).expanduser()

    @property
    def tracking_uri(self) -> str:
        return self.model.tracking_uri or f"sqlite:///{(self.work_path / 'mlflow.db').resolve()}"

    @property
    def sink_path(self) -> Path:
        return Path(self.sinks.path).expanduser() if self.sinks.path else self.work_path / "results.db"


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
    node[leaf] = value


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<root>"
        lines.append(f"  {field}: {item['msg']}")
    return "invalid config:\n" + "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read, override and validate a config; raises ConfigError naming each bad field."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` from the command line; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"--set expects FIELD=VALUE, got {text!r}")
    dotted, raw = text.split("=", 1)
    return dotted.strip(), yaml.safe_load(raw)
