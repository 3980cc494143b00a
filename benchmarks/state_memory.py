"""Bounded memory under a hostile fleet: `iotml stream` on a private Mosquitto, flooded with new device ids and with
payloads just under the size limit.

After a warm-up (model load, TF graph build), it publishes ``--devices`` messages, each from a device never seen
before, then ``--large`` valid messages padded to just under ``events.max_payload_bytes``, waits until every one is
a prediction or a dead letter, and drains the stream. It samples the pipeline's resident memory (its receiver child
included) every second and reads from the stream's final log line the most devices any stateful step held. The
claim checked: memory grows by at most 200 MB after warm-up and no step holds more devices than
``devices.max_devices``. Last output line is JSON:
{"devices", "large", "published", "accounted", "lost", "max_devices", "device_states_max", "rss_warm_mb",
"rss_peak_mb", "rss_end_mb", "growth_mb", "growth_devices_mb", "growth_large_mb", "seconds"} (growth during the
new-device flood and during the large payloads, which are published once the flood is processed).

    python benchmarks/state_memory.py [--devices 200000] [--large 65000] [--max-devices 10000] [--model PATH]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from live_latency import MemorySampler, ensure_model, start_pipeline, stop_pipeline, wait_for_log  # its sibling script
from features.schema import event_payload
from inference_pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]
STATES = re.compile(r"at most (\d+) devices held")
LOG = logging.getLogger("state_memory")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen, int]:
    """A private Mosquitto that queues whatever the stream has not taken yet (no count or byte limit)."""
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                      f"max_queued_bytes 0\nmax_inflight_bytes 0\nuser root\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return broker, port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not start") from None
            time.sleep(0.05)


def publish(port: int, topic_prefix: str, payloads: list[tuple[str, str]]) -> None:
    """QoS 1 publishes of (device_id, payload), waiting for every acknowledgement."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"state-bench-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(f"{topic_prefix}/{device}/telemetry", payload, qos=1) for device, payload in payloads]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def accounted(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as connection:
        try:
            return sum(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                       for table in ("predictions", "dead_letters"))
        except sqlite3.OperationalError:
            return 0


def wait_accounted(db: Path, total: int, process: subprocess.Popen, stall_s: float = 120.0) -> int:
    last, since = -1, time.monotonic()
    while True:
        done = accounted(db)
        if done >= total or process.poll() is not None:
            return done
        if done != last:
            last, since = done, time.monotonic()
        elif time.monotonic() - since > stall_s:
            LOG.warning("stream stalled at %d of %d", done, total)
            return done
        time.sleep(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200_000, help="messages, each from a new device id")
    parser.add_argument("--large", type=int, default=65_000, help="messages just under the payload size limit")
    parser.add_argument("--max-devices", type=int, default=10_000, help="devices.max_devices of the stream")
    parser.add_argument("--model", help="model version folder (default: train one under --work-dir)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "bench-live")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if shutil.which("mosquitto") is None:
        sys.exit("mosquitto is not installed")
    config = load_config(REPO / "configs" / "mqtt.yaml")
    sensors, limit = config.features.sensors, config.events.max_payload_bytes
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model = ensure_model(args.work_dir, args.model)
    rng = np.random.default_rng(0)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker, port = start_broker(folder)
        tag = uuid.uuid4().hex[:8]
        prefix, db, log = f"iotml-state/{tag}", folder / "results.db", args.work_dir / f"state-{tag}.log"
        overrides = {"model.uri": model, "source.mqtt.port": port, "source.mqtt.client_id": f"iotml-state-{tag}",
                     "source.mqtt.topics": [f"{prefix}/+/telemetry"], "sinks.results.path": str(db),
                     "sinks.alert_topic.topic": f"{prefix}/alerts",
                     "sinks.dead_letter_topic.topic": f"{prefix}/dead-letters",
                     "devices.max_devices": args.max_devices}
        pipeline = start_pipeline(REPO / "configs" / "mqtt.yaml", overrides, [], log)
        try:
            wait_for_log(log, "connected", pipeline, 180)
            now = time.time()

            def event(device: str, i: int, pad: int = 0) -> tuple[str, str]:
                payload = event_payload(device, now - 60 + i * 1e-4, dict(zip(sensors, rng.normal(size=len(sensors)))),
                                        f"{device}-{i}")
                return device, payload if not pad else payload[:-1] + f',"pad":"{"x" * pad}"}}'

            warm = [event(f"warm-{i % 10}", i) for i in range(2000)]
            publish(port, prefix, warm)
            wait_accounted(db, len(warm), pipeline)
            memory = MemorySampler(pipeline.pid)
            warm_rss = memory.rss_mb()
            LOG.info("warm-up done at %.0f MB; flooding %d new device ids", warm_rss, args.devices)
            for start in range(0, args.devices, 20_000):
                publish(port, prefix, [event(f"new-{i}", i) for i in range(start, min(args.devices, start + 20_000))])
            done = wait_accounted(db, len(warm) + args.devices, pipeline)
            after_devices = len(memory.samples_mb)
            size = len(event("large-0", 0)[1])
            LOG.info("publishing %d payloads of %d bytes (limit %d)", args.large, limit - 64, limit)
            for start in range(0, args.large, 5_000):
                publish(port, prefix, [event(f"large-{i % 50}", i, limit - 64 - size)
                                       for i in range(start, min(args.large, start + 5_000))])
            total = len(warm) + args.devices + args.large
            done = wait_accounted(db, total, pipeline)
            memory.stop()
        finally:
            stop_pipeline(pipeline, 300)
            broker.terminate()
            broker.wait(10)
        text = log.read_text(errors="replace")
    if pipeline.returncode != 0:
        LOG.error("the stream exited with %s; its log: %s\n%s", pipeline.returncode, log, text[-3000:])
    held = STATES.search(text)
    samples = memory.samples_mb or [warm_rss]
    result = {"devices": args.devices, "large": args.large, "published": total, "accounted": done,
              "lost": total - done, "max_devices": args.max_devices,
              "device_states_max": int(held.group(1)) if held else None, "rss_warm_mb": round(warm_rss),
              "rss_peak_mb": round(max(samples)), "rss_end_mb": round(samples[-1]),
              "growth_mb": round(max(samples) - warm_rss),
              "growth_devices_mb": round(max(samples[:after_devices] or [warm_rss]) - warm_rss),
              "growth_large_mb": round(max(samples[after_devices:] or [warm_rss]) - warm_rss),
              "seconds": round(time.time() - started)}
    print(json.dumps(result))
    ok = (result["lost"] == 0 and result["growth_mb"] <= 200 and held is not None
          and result["device_states_max"] <= args.max_devices and pipeline.returncode == 0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
