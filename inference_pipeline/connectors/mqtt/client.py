"""paho MQTT client construction and connection, without Beam: the receiver process, the sink and the load generator
build their clients here from ``MqttSettings``."""
from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from inference_pipeline.connectors.mqtt.settings import MqttSettings


def create_client(settings: MqttSettings, *, client_id: str, clean_start: bool, manual_ack: bool) -> mqtt.Client:
    """A paho 2.x client configured from ``settings`` (auth, TLS, backoff); not yet connected."""
    v5 = settings.protocol == "5"
    kwargs: dict[str, Any] = {
        "callback_api_version": CallbackAPIVersion.VERSION2,
        "client_id": client_id,
        "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        "manual_ack": manual_ack,
    }
    if not v5:
        kwargs["clean_session"] = clean_start
    client = mqtt.Client(**kwargs)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.resolved_password())
    if settings.tls is not None:
        client.tls_set(ca_certs=settings.tls.ca_certs, certfile=settings.tls.certfile, keyfile=settings.tls.keyfile)
        client.tls_insecure_set(settings.tls.insecure)
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    client.max_inflight_messages_set(settings.max_inflight)
    client.max_queued_messages_set(0)
    return client


def connect_in_background(client: mqtt.Client, settings: MqttSettings, *, clean_start: bool, persistent: bool) -> None:
    """Start connecting in paho's network thread, which also reconnects with exponential backoff.

    ``persistent``: the broker keeps the session ``settings.session_expiry_s`` after a disconnect (MQTT v5; with
    v3.1.1 that follows from ``clean_start`` off). With v5, ``clean_start`` applies to the first connect only, so a
    reconnect never discards the session's unacknowledged messages.
    """
    if settings.protocol == "5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = settings.session_expiry_s if persistent else 0
        props.ReceiveMaximum = settings.max_inflight
        start = mqtt.MQTT_CLEAN_START_FIRST_ONLY if clean_start else False
        client.connect_async(settings.host, settings.port, settings.keepalive, clean_start=start, properties=props)
    else:
        client.connect_async(settings.host, settings.port, settings.keepalive)
    client.loop_start()


def connect_and_wait(client: mqtt.Client, settings: MqttSettings) -> None:
    """Connect with a clean, non-persistent session (publishers) and wait for the broker to accept it.

    Raises ConnectionError naming the broker's refusal (bad credentials, not authorised), or saying that no
    answer came within ``settings.connect_timeout_s`` (broker down, wrong port, TLS handshake failed).
    """
    accepted = threading.Event()
    refusals: list[str] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            refusals.append(str(reason_code))
        else:
            accepted.set()

    client.on_connect = on_connect
    connect_in_background(client, settings, clean_start=True, persistent=False)
    if accepted.wait(settings.connect_timeout_s):
        return
    client.disconnect()
    client.loop_stop()
    where = f"MQTT broker {settings.host}:{settings.port}"
    if refusals:
        raise ConnectionError(f"{where} refused the connection: {refusals[-1]}")
    raise ConnectionError(f"{where} did not answer within {settings.connect_timeout_s:g} s "
                          "(down, wrong port, or the TLS handshake failed)")
