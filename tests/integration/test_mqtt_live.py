"""Nothing lost on a real broker: `iotml stream` (configs/mqtt.yaml) fed by the load generator through Mosquitto.

Accounting: every published message comes out once, as a prediction (SQLite sink) or a dead letter (MQTT topic);
redelivered copies are dropped by event id and only counted. The broker-restart and kill tests run a private
Mosquitto on another loopback port, so the shared broker on 1883 is never stopped.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from inference_pipeline.connectors.mqtt.settings import MqttSettings
from inference_pipeline.jobs.loadgen import PublishReport, publish_fleet
from tests.crashers import crashers
from training.simulate import simulate_fleet

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[2]
SHARED = ("127.0.0.1", 1883)
DEVICES = 8
TOTALS = re.compile(r"finished in .*: (\d+) predictions, (\d+) dead letters, (\d+) duplicates dropped")
LIVE_LOG_LINE = re.compile(r"stream: \d+ predictions/s, \d+ dead letters, \d+ duplicates in [\d.]+ s; "
                           r"latency ms p50/p95/p99 event->prediction \d+/\d+/\d+")


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateBroker:
    """A Mosquitto of our own with persistence, so it can be stopped and restarted like a real outage.

    ``security`` replaces anonymous access (e.g. a TLS listener's cafile/certfile/keyfile and a password_file).
    """

    def __init__(self, folder: Path, security: str = "allow_anonymous true\n"):
        self.port = free_port()
        data = folder / "mosquitto"
        data.mkdir()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n{security}persistence true\n"
            f"persistence_location {data}/\nmax_queued_messages 100000\nuser root\nlog_dest stderr\n")
        self.log = (folder / "mosquitto.log").open("ab")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            assert time.monotonic() < deadline and self.process.poll() is None, "private mosquitto did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def shared_broker() -> tuple[str, int]:
    if not reachable(*SHARED):
        pytest.skip(f"no MQTT broker on {SHARED[0]}:{SHARED[1]}")
    return SHARED


@pytest.fixture
def private_broker(tmp_path):
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    broker = PrivateBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


class Stream:
    """One deployment under test: its topics, its SQLite sink, and `iotml stream` processes started on demand."""

    def __init__(self, folder: Path, port: int, bundle_path: Path, devices: list[str], **broker: object):
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = f"iotml-it/{self.tag}"
        self.port = port
        self.db = folder / "results.db"
        self.folder = folder
        self.overrides = {
            "model.uri": str(bundle_path), "sinks.results.path": str(self.db), "source.mqtt.port": port,
            "source.mqtt.client_id": f"iotml-it-{self.tag}", "source.mqtt.topics": [f"{self.prefix}/+/telemetry"],
            "source.mqtt.reconnect_max_s": 2, "events.known_devices": devices,
            "sinks.alert_topic.topic": f"{self.prefix}/alerts", "sinks.dead_letter_topic.topic": f"{self.prefix}/dead-letters",
            **{f"source.mqtt.{field}": value for field, value in broker.items()}}
        self.settings = MqttSettings(port=port, topics=(self.prefix,), client_id=f"iotml-it-gen-{self.tag}", **broker)
        self.runs = 0

    def launch(self, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """Start `iotml stream` (environment ``env``, default this one's); its log file."""
        self.runs += 1
        log = self.folder / f"stream-{self.runs}.log"
        command = [sys.executable, "-m", "inference_pipeline.cli", "stream", "--config", str(REPO / "configs" / "mqtt.yaml")]
        for field, value in self.overrides.items():
            command += ["--set", f"{field}={json.dumps(value)}"]
        process = subprocess.Popen(command, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
        return process, log

    def start(self, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """Start `iotml stream` and wait until its MQTT session is connected."""
        process, log = self.launch(env)
        wait_until(lambda: " connected (session present" in log.read_text(errors="replace"), 120, process, log)
        return process, log

    def publish(self, rate: float, seconds: float, malformed_fraction: float = 0.0, seed: int = 7) -> PublishReport:
        return publish_fleet(self.settings, self.prefix, rate, DEVICES, seconds, malformed_fraction, seed)

    def warm_up(self, process: subprocess.Popen, log: Path) -> PublishReport:
        """Publish a few events and wait for their predictions: the first batch builds the TF graph (seconds)."""
        report = self.publish(rate=200, seconds=1, seed=6)
        wait_until(lambda: self.predictions()[0] >= report.published, 60, process, log)
        return report

    def predictions(self) -> tuple[int, int]:
        """(prediction rows, distinct event ids) in the sink."""
        if not self.db.exists():
            return 0, 0
        with sqlite3.connect(self.db, timeout=30) as connection:
            try:
                return connection.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM predictions").fetchone()
            except sqlite3.OperationalError:
                return 0, 0

    def drain_when_predicted(self, process: subprocess.Popen, log: Path, count: int, settle_s: float = 0.0
                             ) -> dict[str, int]:
        """Wait until ``count`` distinct events are predicted (then ``settle_s`` more, for late copies to show),
        then drain; the logged totals."""
        wait_until(lambda: self.predictions()[1] >= count, 90, process, log)
        time.sleep(settle_s)
        return drain(process, log)


class TopicMessages:
    """A subscriber on one of the deployment's result topics (QoS 1, subscribed before anything is published)."""

    def __init__(self, stream: Stream, suffix: str = "dead-letters"):
        self.messages: list[dict] = []
        ready = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"iotml-it-dl-{stream.tag}")
        self._client.on_connect = lambda c, *args: c.subscribe(f"{stream.prefix}/{suffix}", qos=1)
        self._client.on_subscribe = lambda *args: ready.set()
        self._client.on_message = lambda c, u, m: self.messages.append(json.loads(m.payload))
        self._client.connect("127.0.0.1", stream.port)
        self._client.loop_start()
        assert ready.wait(10), "dead-letter subscription failed"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def wait_until(condition, timeout_s: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"pipeline exited with {process.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s" + (f":\n{log.read_text()[-3000:]}" if log else ""))
        time.sleep(0.2)


def drain(process: subprocess.Popen, log: Path, signum: int = signal.SIGINT) -> dict[str, int]:
    """Ctrl-C (or SIGTERM): the pipeline finishes what it read, acknowledges it and exits 0; its logged totals."""
    process.send_signal(signum)
    assert process.wait(60) == 0, log.read_text()[-3000:]
    found = TOTALS.search(log.read_text())
    assert found, log.read_text()[-3000:]
    return dict(zip(("predictions", "dead_letters", "duplicates"), map(int, found.groups())))


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


@pytest.fixture
def fleet_devices() -> list[str]:
    return sorted(simulate_fleet(DEVICES, 1.0)["device_id"].unique())


def test_ten_thousand_published_events_are_all_predicted(shared_broker, trained, tmp_path, fleet_devices):
    stream = Stream(tmp_path, shared_broker[1], trained.version.path, fleet_devices)
    process, log = stream.start()
    try:
        report = stream.publish(rate=2000, seconds=5)
        totals = stream.drain_when_predicted(process, log, report.published)
    finally:
        kill(process)
    rows, distinct = stream.predictions()
    print(f"\n10k test: published {report.published}, predictions {rows} ({distinct} distinct), "
          f"dead letters {totals['dead_letters']}, duplicates dropped {totals['duplicates']}")
    assert report.published == 10_000
    assert rows == distinct == report.published
    assert totals == {"predictions": rows, "dead_letters": 0, "duplicates": totals["duplicates"]}


def test_broker_restart_mid_stream_loses_nothing_and_predicts_nothing_twice(private_broker, trained, tmp_path,
                                                                             fleet_devices):
    stream = Stream(tmp_path, private_broker.port, trained.version.path, fleet_devices)
    process, log = stream.start()
    try:
        warm = stream.warm_up(process, log)
        reports: list[PublishReport] = []
        feeder = threading.Thread(target=lambda: reports.append(stream.publish(rate=1000, seconds=6)))
        feeder.start()
        wait_until(lambda: stream.predictions()[0] >= warm.published + 1500, 60, process, log)
        private_broker.stop()
        at_stop = stream.predictions()[0]
        time.sleep(2)
        private_broker.start()
        wait_until(lambda: "epoch 2" in log.read_text(), 60, process, log)
        feeder.join(90)
        published = warm.published + reports[0].published
        totals = stream.drain_when_predicted(process, log, published, settle_s=1)
    finally:
        kill(process)
    rows, distinct = stream.predictions()
    print(f"\nbroker restart: published {published}, {at_stop} predicted when the broker stopped; predictions {rows} "
          f"({distinct} distinct), dead letters {totals['dead_letters']}, duplicates dropped {totals['duplicates']}")
    assert rows == distinct == published
    assert totals["dead_letters"] == 0
    assert LIVE_LOG_LINE.search(log.read_text()), "no periodic throughput/latency line in the stream log"


def kill_while_writing(process: subprocess.Popen, stream: Stream) -> int:
    """SIGKILL right after new predictions land in the sink, before their bundle can be acknowledged."""
    rows = stream.predictions()[0]
    while stream.predictions()[0] == rows:
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    return stream.predictions()[0]


def test_killed_pipeline_resumes_after_restart_with_nothing_lost_or_predicted_twice(private_broker, trained, tmp_path,
                                                                                   fleet_devices):
    stream = Stream(tmp_path, private_broker.port, trained.version.path, fleet_devices)
    first, first_log = stream.start()
    second = None
    try:
        reports: list[PublishReport] = []
        feeder = threading.Thread(target=lambda: reports.append(stream.publish(rate=1000, seconds=4)))
        feeder.start()
        wait_until(lambda: stream.predictions()[0] >= 1000, 60, first, first_log)
        at_kill = kill_while_writing(first, stream)
        feeder.join(30)
        reports.append(stream.publish(rate=1000, seconds=1, seed=8))
        published = sum(report.published for report in reports)
        second, second_log = stream.start()
        totals = stream.drain_when_predicted(second, second_log, published, settle_s=1)
    finally:
        kill(first)
        if second is not None:
            kill(second)
    rows, distinct = stream.predictions()
    print(f"\nkill test: published {published}, {at_kill} predicted at the kill; after restart {totals['predictions']} "
          f"predictions, {totals['duplicates']} redelivered copies dropped; predictions {rows} ({distinct} distinct)")
    assert rows == distinct == published
    assert totals["predictions"] == published - at_kill
    assert totals["dead_letters"] == 0


def test_malformed_payloads_go_to_the_dead_letter_topic_and_the_stream_keeps_its_rate(shared_broker, trained,
                                                                                      tmp_path, fleet_devices):
    stream = Stream(tmp_path, shared_broker[1], trained.version.path, fleet_devices)
    topic = TopicMessages(stream)
    process, log = stream.start()
    try:
        warm = stream.warm_up(process, log)
        report = stream.publish(rate=2000, seconds=5, malformed_fraction=0.01)
        published = warm.published + report.published
        malformed = sum(report.malformed.values())
        wait_until(lambda: stream.predictions()[0] + len(topic.messages) >= published, 90, process, log)
        caught_up = time.time()
        totals = drain(process, log)
    finally:
        topic.close()
        kill(process)
    rows, distinct = stream.predictions()
    reasons = Counter(letter["reason"] for letter in topic.messages)
    rate = report.published / (caught_up - report.started)
    print(f"\nmalformed test: published {published} ({malformed} malformed: {dict(report.malformed)}); "
          f"predictions {rows}, dead letters on the topic {len(topic.messages)}, {rate:.0f} events/s end to end")
    assert malformed == 100 and reasons == Counter(report.malformed)
    assert rows == distinct == published - malformed
    assert totals["dead_letters"] == malformed
    assert all(letter["detail"] and letter["payload"] for letter in topic.messages)
    assert rate > 0.8 * 2000


def test_each_former_crasher_costs_one_dead_letter_and_the_stream_stays_up(shared_broker, trained, tmp_path,
                                                                          fleet_devices):
    stream = Stream(tmp_path, shared_broker[1], trained.version.path, fleet_devices)
    topic = TopicMessages(stream)
    process, log = stream.start()
    cases = crashers(fleet_devices[0], trained.version.feature_spec.sensors, time.time() - 5)
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"iotml-it-crash-{stream.tag}")
    try:
        warm = stream.warm_up(process, log)
        publisher.connect("127.0.0.1", stream.port)
        publisher.loop_start()
        for payload, _ in cases:
            publisher.publish(f"{stream.prefix}/{fleet_devices[0]}/telemetry", payload, qos=1).wait_for_publish(10)
        after = stream.publish(rate=200, seconds=1, seed=9)
        wait_until(lambda: len(topic.messages) >= len(cases) and stream.predictions()[0] >= warm.published
                   + after.published, 90, process, log)
        assert process.poll() is None
        totals = drain(process, log)
    finally:
        publisher.loop_stop()
        topic.close()
        kill(process)
    assert sorted(letter["reason"] for letter in topic.messages) == sorted(reason for _, reason in cases)
    assert all(letter["detail"] and "\n" not in letter["detail"] for letter in topic.messages)
    assert totals == {"predictions": warm.published + after.published, "dead_letters": len(cases), "duplicates": 0}


def test_a_dead_receiver_stops_the_stream_promptly_with_a_clear_error(shared_broker, trained, tmp_path,
                                                                      fleet_devices):
    stream = Stream(tmp_path, shared_broker[1], trained.version.path, fleet_devices)
    process, log = stream.start()
    try:
        receiver = subprocess.run(["pgrep", "-P", str(process.pid), "-f", "connectors.mqtt.receiver"],
                                  capture_output=True, text=True, check=True).stdout.split()
        os.kill(int(receiver[0]), signal.SIGKILL)
        assert process.wait(60) == 2
    finally:
        kill(process)
    assert "iotml stream: error: MQTT receiver of" in log.read_text().splitlines()[-1]
    assert "exited (code -9)" in log.read_text()


def write_tls_files(folder: Path) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1, as PEM files (what a plant's PKI would hand out)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, signer, extensions) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("iotml test CA", ca_key, "iotml test CA", ca_key, [x509.BasicConstraints(ca=True, path_length=0)])
    server = certificate("127.0.0.1", server_key, "iotml test CA", ca_key, [
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])])
    files = {"ca": folder / "ca.crt", "cert": folder / "server.crt", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    return files


@pytest.fixture
def secure_broker(tmp_path):
    """A private Mosquitto as the README sets one up: TLS listener with its own CA, no anonymous access, a password."""
    for tool in ("mosquitto", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    files = write_tls_files(tmp_path)
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "iotml", "plant-secret-42"], check=True)
    broker = PrivateBroker(tmp_path, f"cafile {files['ca']}\ncertfile {files['cert']}\nkeyfile {files['key']}\n"
                                     f"allow_anonymous false\npassword_file {passwords}\n")
    broker.start()
    yield broker, files["ca"]
    broker.stop()


def publish_with_cli(url: str, password: str, seconds: float) -> subprocess.CompletedProcess:
    """`iotml simulate --publish URL` at 500 messages/s, the password from IOTML_MQTT_PASSWORD."""
    command = [sys.executable, "-m", "inference_pipeline.cli", "simulate", "--publish", url, "--rate", "500",
               "--devices", str(DEVICES), "--duration", str(seconds)]
    return subprocess.run(command, cwd=REPO, env={**os.environ, "IOTML_MQTT_PASSWORD": password},
                          capture_output=True, text=True, timeout=120)


def test_tls_and_password_from_the_environment_carry_the_stream_and_bad_credentials_are_refused(
        secure_broker, trained, tmp_path, fleet_devices):
    broker, ca = secure_broker
    password = "plant-secret-42"
    stream = Stream(tmp_path, broker.port, trained.version.path, fleet_devices, username="iotml",
                    tls={"ca_certs": str(ca)})
    url = f"mqtts://iotml@127.0.0.1:{broker.port}/{stream.prefix}?ca_certs={ca}&connect_timeout_s=3"

    refused = publish_with_cli(url, "not-the-password", 1)
    assert refused.returncode == 2 and "refused the connection: Not authorized" in refused.stderr, refused.stderr
    plain = publish_with_cli(url.replace("mqtts://", "mqtt://").split("?")[0] + "?connect_timeout_s=3", password, 1)
    assert plain.returncode == 2 and "did not answer" in plain.stderr, plain.stderr

    locked_out, locked_log = stream.launch({**os.environ, "IOTML_MQTT_PASSWORD": "not-the-password"})
    try:
        assert locked_out.wait(120) == 2, locked_log.read_text()[-3000:]
    finally:
        kill(locked_out)
    assert "refused the connection: Not authorized" in locked_log.read_text(), locked_log.read_text()[-3000:]

    process, log = stream.start({**os.environ, "IOTML_MQTT_PASSWORD": password})
    try:
        published = publish_with_cli(url, password, 2)
        assert published.returncode == 0, published.stderr
        count = json.loads(published.stdout.strip().splitlines()[-1])["published"]
        totals = stream.drain_when_predicted(process, log, count)
    finally:
        kill(process)
    rows, distinct = stream.predictions()
    print(f"\nTLS + password: published {count} over mqtts, predictions {rows} ({distinct} distinct); wrong password: "
          f"{refused.stderr.strip().splitlines()[-1]}")
    assert rows == distinct == count == 1000
    assert totals["predictions"] == count and totals["dead_letters"] == 0
    assert all(password not in text for text in (log.read_text(), locked_log.read_text(), published.stderr))
