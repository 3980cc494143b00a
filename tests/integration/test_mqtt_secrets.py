"""The receiver child on a password-protected Mosquitto: refused with a wrong password, connected with the right one,
reconnected across a broker restart; none of what it writes shows the password (it names host and port only)."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from inference_pipeline.connectors.mqtt.receiver import start_receiver, write_frame
from inference_pipeline.connectors.mqtt.settings import MqttSettings
from tests.integration.test_mqtt_live import PrivateBroker, wait_until

pytestmark = pytest.mark.services

PASSWORD = "plant-secret-42"
WRONG = "not-the-password"


@pytest.fixture
def password_broker(tmp_path):
    for tool in ("mosquitto", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "iotml", PASSWORD], check=True)
    broker = PrivateBroker(tmp_path, f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()
    yield broker
    broker.stop()


def run_receiver(settings: MqttSettings, log: Path, monkeypatch, password_env: str) -> subprocess.Popen:
    """The receiver child with ``IOTML_MQTT_PASSWORD`` set to ``password_env``, its stderr (all it writes) in
    ``log``."""
    monkeypatch.setenv("IOTML_MQTT_PASSWORD", password_env)
    with log.open("wb") as stderr:
        return start_receiver(settings, stderr)


def stop(child: subprocess.Popen) -> None:
    try:
        write_frame(child.stdin, None)
        child.stdin.close()
        child.wait(10)
    except (BrokenPipeError, subprocess.TimeoutExpired):
        child.kill()
        child.wait(10)


def test_receiver_logs_refusals_and_reconnects_without_the_password(password_broker, tmp_path, monkeypatch):
    settings = MqttSettings(port=password_broker.port, topics=("iotml-it/+/telemetry",), client_id="iotml-it-secrets",
                            username="iotml", reconnect_min_s=1, reconnect_max_s=1, session_expiry_s=0)
    refused_log, accepted_log = tmp_path / "receiver-refused.log", tmp_path / "receiver-accepted.log"

    refused = run_receiver(settings.model_copy(update={"password": SecretStr(WRONG)}), refused_log, monkeypatch,
                           WRONG)
    try:
        wait_until(lambda: refused_log.read_text().count("connect refused") >= 2, 30)
    finally:
        stop(refused)

    accepted = run_receiver(settings, accepted_log, monkeypatch, PASSWORD)
    try:
        wait_until(lambda: "epoch 1" in accepted_log.read_text(), 30)
        password_broker.stop()
        wait_until(lambda: "could not reach" in accepted_log.read_text(), 30)
        time.sleep(1)
        password_broker.start()
        wait_until(lambda: "epoch 2" in accepted_log.read_text(), 30)
    finally:
        stop(accepted)
    texts = {"refused": refused_log.read_text(), "accepted": accepted_log.read_text()}
    print("\n" + "\n".join(f"{name}: {text.strip().splitlines()[-1]}" for name, text in texts.items()))
    assert "Not authorized" in texts["refused"]
    assert "disconnected" in texts["accepted"] and "could not reach" in texts["accepted"]
    assert not [name for name, text in texts.items() if PASSWORD in text or WRONG in text]
