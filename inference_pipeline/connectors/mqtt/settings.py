"""MQTT connector settings: the broker connection (``MqttSettings``), the source's reading limits (``ReadLimits``),
and the two kinds the config names: ``source.kind: mqtt`` and a sink of ``kind: mqtt``. Secrets never need to be
in a file: the password can come from an environment variable."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from inference_pipeline.connectors.base import ConnectorSettings, SinkSettings


class MqttTls(BaseModel):
    """TLS options; an empty model means TLS with the system CA store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    insecure: bool = False


class MqttSettings(BaseModel):
    """Broker connection and subscription settings (one persistent session per ``client_id``).

    QoS 2 is not offered: paho answers PUBREC on receipt, after which the broker never resends the message, so a
    crash before the ack would lose it. With MQTT v5 (the default) ``max_inflight`` is the Receive Maximum the
    broker honours: the unacknowledged messages it pushes ahead, all of which it resends after a reconnect (so
    the config requires ``dedup.max_ids_per_device`` to cover it); with v3.1.1 the broker's
    ``max_inflight_messages`` (Mosquitto: 20) applies, so a burst overflows its queue and is dropped while acks wait
    for bundles to commit. Payloads over ``max_payload_bytes`` are still emitted, as their first
    ``max_payload_bytes`` bytes and true size (the parser dead-letters them as oversize), and do not move the
    watermark; the limit is deliberately not sent as the MQTT v5 Maximum Packet Size, which would make the broker
    drop such messages silently.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topics: tuple[str, ...] = ()
    qos: int = Field(1, ge=0, le=1)
    client_id: str = Field(min_length=1, max_length=128)
    clean_start: bool = False
    protocol: Literal["5", "3.1.1"] = "5"
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, le=0xFFFFFFFF)
    username: str | None = None
    password: SecretStr | None = None
    password_env: str = "IOTML_MQTT_PASSWORD"
    tls: MqttTls | None = None
    keepalive: int = Field(30, ge=5)
    reconnect_min_s: int = Field(1, ge=1)
    reconnect_max_s: int = Field(60, ge=1)
    max_inflight: int = Field(10_000, ge=1, le=65535)
    max_payload_bytes: int = Field(65536, ge=1)
    connect_timeout_s: float = Field(10.0, gt=0)

    def resolved_password(self) -> str | None:
        """The configured password, else the one in the ``password_env`` environment variable."""
        if self.password is not None:
            return self.password.get_secret_value()
        return os.environ.get(self.password_env)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> "MqttSettings":
        """Settings from ``mqtt[s]://[user[:password]@]host[:port][/topic/filter][?client_id=...&qos=1]``.

        Errors never echo the URL (it may carry a password). The path, if any, is one topic filter (``mqtt://host/plant/+/telemetry``); query parameters and keyword
        overrides set any other field. An ``mqtts://`` URL takes the TLS fields as query parameters too
        (``?ca_certs=/etc/iotml/ca.crt&certfile=...&keyfile=...``); without them it trusts the system CA store.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"expected an mqtt:// or mqtts:// URL, got a {parts.scheme or 'schemeless'} URL")
        query = dict(parse_qsl(parts.query))
        tls = {name: query.pop(name) for name in MqttTls.model_fields if name in query}
        if tls and parts.scheme != "mqtts":
            raise ValueError(f"TLS options {sorted(tls)} need an mqtts:// URL, got an mqtt:// one")
        fields: dict[str, Any] = {"host": parts.hostname or "127.0.0.1"}
        if parts.port:
            fields["port"] = parts.port
        elif parts.scheme == "mqtts":
            fields["port"] = 8883
        if parts.scheme == "mqtts":
            fields["tls"] = MqttTls.model_validate(tls)
        if parts.username:
            fields["username"] = unquote(parts.username)
        if parts.password:
            fields["password"] = unquote(parts.password)
        topic = unquote(parts.path.lstrip("/"))
        if topic:
            fields["topics"] = (topic,)
        fields.update(query)
        fields.update(overrides)
        return cls.model_validate(fields)

    @classmethod
    def coerce(cls, value: "MqttSettings | Mapping[str, Any] | str") -> "MqttSettings":
        """Settings from a model, a mapping (e.g. the ``source.mqtt`` config section) or a URL."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls.from_url(value)
        return cls.model_validate(dict(value))


@dataclasses.dataclass(frozen=True)
class ReadLimits:
    """Reader timing, batching, watermark and stop settings.

    ``poll_wait_s``: how long a bundle's first read waits for a message (FnApiRunner reschedules an idle source at
    once, so this is what keeps it from spinning). A batch gathers the messages arriving within ``batch_window_s``
    of its first one, ends early after ``batch_wait_s`` without a message, and holds at most ``max_batch`` messages
    and ``max_batch_bytes`` of payload (a bundle is one batch, and each step holds a copy of it: the byte limit bounds
    what a backlog of large payloads costs): the window trades latency for per-batch overhead (at 2,000 events/s,
    0.1 s instead of 0.03 s cost 70 ms at the median and saved 37 % of the CPU per event; ``batch_wait_s`` must
    exceed the receiver's forwarding interval, 10 ms, or every forwarded frame ends a batch). The watermark is the
    largest event time seen minus ``max_lateness_s``, or, after ``idle_watermark_after_s`` without messages, the
    wall clock minus ``max_lateness_s``. ``max_records`` and ``stop_after_idle_s`` end the stream (benchmarks,
    tests, draining a backlog): the reader then reports a final watermark and the pipeline finishes. While no
    message arrives, the reader emits an empty batch every ``idle_tick_s`` (None: never), so the steps that act on
    the passing of time (the device roster's silence and expiry notices) run when nothing arrives at all.
    """

    poll_wait_s: float = 0.25
    batch_window_s: float = 0.1
    batch_wait_s: float = 0.025
    max_batch: int = 2000
    max_batch_bytes: int = 4 * 2**20
    max_lateness_s: float = 60.0
    max_clock_skew_s: float = 300.0
    idle_watermark_after_s: float | None = 30.0
    max_records: int | None = None
    stop_after_idle_s: float | None = None
    close_linger_s: float = 30.0
    idle_tick_s: float | None = 1.0


class SubscriptionSettings(MqttSettings):
    """The source's broker settings: at least one topic filter; the payload limit is ``events.max_payload_bytes``;
    ``max_inflight`` defaults to ``dedup.max_ids_per_device``'s default, which must cover it (publishers and sinks
    keep the larger default of their outgoing window)."""

    topics: tuple[str, ...] = Field(min_length=1)
    max_inflight: int = Field(2000, ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _one_payload_limit(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "max_payload_bytes" in data:
            raise ValueError("max_payload_bytes: set the payload limit once, as events.max_payload_bytes")
        return data


class MqttSourceSettings(ConnectorSettings):
    """``source.kind: mqtt``: a persistent QoS 1 subscription (``mqtt``: broker, topics, session) read in batches
    (``read``: batching, watermark and stop settings)."""

    kind: Literal["mqtt"] = "mqtt"
    mqtt: SubscriptionSettings
    read: ReadLimits = ReadLimits()


class MqttSinkSettings(SinkSettings):
    """A sink of ``kind: mqtt``: each result row as a JSON message on ``topic`` at QoS ``qos``, published with
    ``mqtt`` (default: the MQTT source's broker)."""

    kind: Literal["mqtt"] = "mqtt"
    topic: str = Field(min_length=1)
    mqtt: MqttSettings | None = None
    qos: int = Field(1, ge=0, le=1)
