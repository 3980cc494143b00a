"""Freshness and cost on a real broker: `iotml stream` (configs/mqtt.yaml) fed by the load generator through local
Mosquitto.

Starts the pipeline as its own process, publishes a warm-up (excluded: model load, TF graph build), waits for it to
drain, then publishes the measured run at ``--rate`` for ``--duration`` seconds, waits for the stream to drain and
stops the pipeline with SIGINT (a clean drain: the benchmark exits 1 if the pipeline does not exit cleanly). The load
generator runs as its own process (so the pipeline, not the generator, is what is measured). Latency is publish ->
prediction available at the sink: each event's ``ts`` is the wall clock when the generator published it, and the
prediction's ``processing_time`` is stamped just before its SQLite row is written.

Cost: ``pipeline_cpu_us_per_event`` is the CPU time (user + system, from /proc) of the pipeline process and its
children (the MQTT receiver) over the measured period, per event accounted for; ``loop_cpu_us_per_event`` is the
plain loop of ``replay_throughput.py`` on the same model (its steady-state seconds per event on one core, measured
here before the stream starts, ``--loop-events`` events); ``loadgen_cpu_share`` is the generator's CPU seconds per
second of publishing (1.0 = one core).

Memory: the pipeline's resident memory (its receiver child included) after warm-up and every minute after it
(``rss_mb_by_minute``); ``rss_growth_pct`` compares the last minute's mean with the memory after warm-up. The soak
(30 minutes at 2,000 ev/s; growth must stay under 5 %) is this benchmark run long: ``make soak``.

Last output line is JSON: {"rate", "duration_s", "published", "predictions", "dead_letters", "lost", "p50_ms",
"p95_ms", "p99_ms", "sustained_eps", "pipeline_cpu_us_per_event", "loop_cpu_us_per_event", "loadgen_cpu_share",
"rss_mb_after_warmup", "rss_mb_by_minute", "rss_growth_pct"}

    python benchmarks/live_latency.py --rate 2000 --duration 60 [--broker mqtt://127.0.0.1:1883] [--model PATH]
    python benchmarks/live_latency.py --rate 2000 --duration 1800     # the soak (make soak)
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from inference_pipeline.config import load_config
from inference_pipeline.connectors.mqtt.settings import MqttSettings
from inference_pipeline.jobs.loadgen import PublishReport, publish_fleet, publisher_settings

REPO = Path(__file__).resolve().parents[1]
# The pipeline's last log line once it has drained (inference_pipeline.runtime.run.run_stream).
FINISHED = re.compile(r"finished in [\d.]+ s: \d+ predictions, \d+ dead letters, \d+ duplicates dropped")
LOG = logging.getLogger("live_latency")


def ensure_model(work: Path, uri: str | None) -> str:
    """A model to serve: ``uri`` if given, else one trained and registered once under ``work`` (the newest model
    version resolved there before is reused; folders left by older layouts, without an architecture or a transform
    fingerprint in model.json, are not)."""
    if uri:
        return uri
    for meta in sorted((work / "models").glob("*/*/model.json"), key=lambda path: path.stat().st_mtime,
                       reverse=True):
        if {"architecture", "transform_id"} <= json.loads(meta.read_text()).keys():
            return str(meta.parent)
    from inference_pipeline.jobs.main_job import train_simulated

    config = load_config(overrides={"work_dir": str(work), "simulation.devices": 12, "simulation.duration_s": 900,
                                    "simulation.train_duration_s": 1800, "training.epochs": 8})
    return str(train_simulated(config, progress=False)[2].path)


def start_pipeline(config: Path, overrides: dict[str, object], extra: list[str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "inference_pipeline.cli", "stream", "--config", str(config)]
    for text in [f"{field}={json.dumps(value)}" for field, value in overrides.items()] + extra:
        command += ["--set", text]
    return subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop_pipeline(pipeline: subprocess.Popen, timeout_s: float) -> None:
    """Drain the pipeline with SIGINT; kill it if it has not exited within ``timeout_s``."""
    if pipeline.poll() is None:
        pipeline.send_signal(signal.SIGINT)
        try:
            pipeline.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pipeline.kill()
            pipeline.wait()


def wait_for_log(log: Path, text: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"pipeline exited with {process.returncode}; see {log}")
        time.sleep(0.2)
    raise TimeoutError(f"no {text!r} in {log} after {timeout_s} s")


def outcomes(db: Path, run: str) -> tuple[np.ndarray, int]:
    """(event_time, processing_time) of the run's predictions, and its dead-letter count (rows tagged ``run``)."""
    if not db.exists():
        return np.empty((0, 2)), 0
    pattern = f"%-{run}-%"
    with sqlite3.connect(db, timeout=30) as connection:
        try:
            rows = connection.execute("SELECT event_time, processing_time FROM predictions WHERE event_id LIKE ?",
                                      (pattern,)).fetchall()
            dead = connection.execute("SELECT COUNT(*) FROM dead_letters WHERE payload LIKE ?", (pattern,)).fetchone()
        except sqlite3.OperationalError:
            return np.empty((0, 2)), 0
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2), int(dead[0])


def wait_drained(db: Path, report: PublishReport, process: subprocess.Popen, stall_s: float) -> tuple[np.ndarray, int]:
    """Poll the sink until every published message is accounted for, or nothing new arrives for ``stall_s``."""
    last, last_change = -1, time.monotonic()
    while True:
        rows, dead = outcomes(db, report.run)
        done = len(rows) + dead
        if done >= report.published or process.poll() is not None:
            return rows, dead
        if done != last:
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            LOG.warning("stream stalled at %d of %d", done, report.published)
            return rows, dead
        time.sleep(1.0)


def process_tree(pid: int) -> list[int]:
    """A process and its children (the pipeline and its MQTT receiver)."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        return []
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes, from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def _publish_in_child(connection, settings: MqttSettings, prefix: str, rate: float, devices: int, duration_s: float,
                      seed: int, sensors: tuple[str, ...]) -> None:
    started = time.process_time()
    report = publish_fleet(settings, prefix, rate, devices, duration_s, seed=seed, sensors=sensors)
    connection.send((report, time.process_time() - started))


def publish_as_process(settings: MqttSettings, prefix: str, rate: float, devices: int, duration_s: float, seed: int,
                       sensors: tuple[str, ...]) -> tuple[PublishReport, float]:
    """``publish_fleet`` in a process of its own; returns its report and the CPU seconds it used."""
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(
        target=_publish_in_child, args=(send, settings, prefix, rate, devices, duration_s, seed, sensors))
    child.start()
    send.close()
    try:
        report, cpu_s = receive.recv()
    except EOFError:
        raise RuntimeError(f"the load generator exited with {child.join() or child.exitcode}") from None
    child.join()
    return report, cpu_s


def loop_cpu_us_per_event(model: str, work: Path, events: int) -> float:
    """The plain loop of replay_throughput.py on the served model: seconds per event on one core, in µs."""
    from replay_throughput import run_baseline, write_events

    from inference_pipeline.runtime.run import event_rules
    from model_handlers.resolve import resolve_model_version

    config = load_config(REPO / "configs" / "mqtt.yaml")
    version = resolve_model_version(model, config.tracking_uri, work / "models")
    path = work / "loop-events.jsonl"
    write_events(path, events, version.feature_spec.sensors)
    run = run_baseline(path, version, event_rules(config, version), 4000, config.alerting.threshold, work)
    path.unlink()
    return 1e6 / run.eps


class MemorySampler:
    """Resident memory of the pipeline process and its children (the MQTT receiver), from Linux /proc, sampled every
    second in the background."""

    def __init__(self, pid: int):
        self._pid = pid
        self.samples_mb: list[float] = []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def rss_mb(self) -> float | None:
        """The summed resident memory in MB; None once the pipeline process is gone."""
        pids = process_tree(self._pid)
        if not pids:
            return None
        total = 0
        for pid in pids:
            try:
                line = next(row for row in Path(f"/proc/{pid}/status").read_text().splitlines()
                            if row.startswith("VmRSS:"))
            except (OSError, StopIteration):
                continue
            total += int(line.split()[1])
        return total / 1024

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            value = self.rss_mb()
            if value is not None:
                self.samples_mb.append(value)

    def stop(self) -> None:
        self._stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True, help="messages per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds of publishing (measured)")
    parser.add_argument("--devices", type=int, default=12)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of warm-up publishing (not measured)")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "mqtt.yaml")
    parser.add_argument("--model", help="model bundle folder or registry URI (default: train one under --work-dir)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "bench-live")
    parser.add_argument("--loop-events", type=int, default=100_000,
                        help="events for the plain loop's cost per event (0: skip it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="extra config override for the pipeline, e.g. source.read.batch_window_s=0.1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("inference_pipeline").setLevel(logging.INFO)

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    model = ensure_model(work, args.model)
    loop_us = round(loop_cpu_us_per_event(model, work, args.loop_events), 1) if args.loop_events else None
    tag = uuid.uuid4().hex[:8]
    prefix = f"iotml-bench/{tag}"
    db, log = work / f"live-{tag}.db", work / f"stream-{tag}.log"
    settings, _ = publisher_settings(f"{args.broker}/{prefix}")
    overrides: dict[str, object] = {
        "model.uri": model, "source.mqtt.host": settings.host, "source.mqtt.port": settings.port,
        "source.mqtt.client_id": f"iotml-bench-{tag}", "source.mqtt.topics": [f"{prefix}/+/telemetry"],
        "sinks.results.path": str(db), "sinks.alert_topic.topic": f"{prefix}/alerts",
        "sinks.dead_letter_topic.topic": f"{prefix}/dead-letters"}
    pipeline = start_pipeline(args.config, overrides, args.overrides, log)
    try:
        wait_for_log(log, "connected", pipeline, 180)
        sensors = load_config(args.config).features.sensors
        warmup, _ = publish_as_process(settings, prefix, args.rate, args.devices, args.warmup, 7, sensors)
        wait_drained(db, warmup, pipeline, 60)
        memory = MemorySampler(pipeline.pid)
        warm_rss = memory.rss_mb()
        cpu_before = cpu_seconds(process_tree(pipeline.pid))
        LOG.info("warm-up drained; measuring %.0f/s for %.0f s", args.rate, args.duration)
        report, loadgen_cpu_s = publish_as_process(settings, prefix, args.rate, args.devices, args.duration, 8,
                                                   sensors)
        rows, dead = wait_drained(db, report, pipeline, 60)
        pipeline_cpu_s = cpu_seconds(process_tree(pipeline.pid)) - cpu_before
        memory.stop()
        minutes = [round(value) for value in memory.samples_mb[::60]]
        if warm_rss is not None and memory.samples_mb:
            LOG.info("pipeline memory (RSS): %.0f MB after warm-up, %.0f MB at the end, peak %.0f MB; by minute: %s",
                     warm_rss, memory.samples_mb[-1], max(memory.samples_mb), " ".join(map(str, minutes)))
    finally:
        stop_pipeline(pipeline, 120)
    totals = FINISHED.search(log.read_text(errors="replace"))
    drained = pipeline.returncode == 0 and totals is not None
    if drained:
        LOG.info("pipeline totals (warm-up included): %s", totals.group(0))
    else:
        LOG.error("the pipeline did not drain and exit cleanly (exit code %s); see %s", pipeline.returncode, log)
    latency_ms = (rows[:, 1] - rows[:, 0]) * 1e3
    p50, p95, p99 = np.percentile(latency_ms, [50, 95, 99]) if len(rows) else (float("nan"),) * 3
    last = rows[:, 1].max() if len(rows) else report.finished
    result = {"rate": args.rate, "duration_s": args.duration, "published": report.published,
              "predictions": int(len(rows)), "dead_letters": dead, "lost": report.published - len(rows) - dead,
              "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "p99_ms": round(float(p99), 1),
              "sustained_eps": round((len(rows) + dead) / max(last - report.started, 1e-9), 1),
              "pipeline_cpu_us_per_event": round(pipeline_cpu_s * 1e6 / max(len(rows) + dead, 1), 1),
              "loop_cpu_us_per_event": loop_us,
              "loadgen_cpu_share": round(loadgen_cpu_s / max(report.finished - report.started, 1e-9), 3),
              "rss_mb_after_warmup": None if warm_rss is None else round(warm_rss),
              "rss_mb_by_minute": minutes,
              "rss_growth_pct": None if warm_rss is None or not memory.samples_mb else
              round((float(np.mean(memory.samples_mb[-60:])) - warm_rss) / warm_rss * 100, 2)}
    LOG.info("publisher: %.0f/s achieved, at most %.3f s behind schedule; pipeline log %s", report.rate,
             report.max_lag_s, log)
    print(json.dumps(result))
    if not drained:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
