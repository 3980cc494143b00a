"""The main job: simulate -> train -> register -> replay through the streaming pipeline -> report."""
from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from inference_pipeline.builder import pipeline_options
from inference_pipeline.config import Config, ConfigError
from inference_pipeline.connectors.replay import ReplaySettings
from inference_pipeline.connectors.sqlite import results_path
from inference_pipeline.evaluation import accuracy, report
from inference_pipeline.jobs.features import with_device_metadata
from inference_pipeline.runtime.results_lock import hold_results, sqlite_paths
from inference_pipeline.jobs.vertex import publish_trained
from inference_pipeline.runtime.run import configured_version, event_rules, run_pipeline
from model_handlers.model_version import ModelVersion
from model_handlers.resolve import is_registry_uri, parse_model_uri
from training.malformed import mix_in_malformed
from training.settings import SimulationSettings
from training.simulate import device_table, iter_payloads, simulate_fleet, write_frame
from training.workflow import TrainingRun, train_and_register

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SimulatedData:
    """Consecutive segments of one fleet's timeline: fault-free training, labelled evaluation, the replayed stream."""

    train: Path
    eval: Path
    stream_truth: Path
    stream_events: Path
    devices: Path
    malformed: dict[str, int]


def simulate_datasets(config: Config) -> SimulatedData:
    sim, out = config.simulation, config.work_path / "data"
    out.mkdir(parents=True, exist_ok=True)
    start = 1767225600.0
    segments = {
        "train": (start, sim.train_duration_s, 0.0),
        "eval": (start + sim.train_duration_s, sim.duration_s, sim.fault_rate),
        "stream": (start + sim.train_duration_s + sim.duration_s, sim.duration_s, sim.fault_rate),
    }
    paths = {}
    for name, (begin, duration, fault_rate) in segments.items():
        frame = simulate_fleet(sim.devices, duration, sim.interval_s, sim.seed, begin, fault_rate)
        paths[name] = write_frame(frame, out / f"{name}.parquet")
    device_path = out / "devices.csv"
    device_table(sorted(frame["device_id"].unique())).to_csv(device_path, index=False)
    payloads, malformed = mix_in_malformed(list(iter_payloads(frame, config.features.sensors)),
                                           sim.malformed_fraction, sim.seed)
    events = out / "stream.jsonl"
    events.write_text("\n".join(payloads) + "\n")
    return SimulatedData(paths["train"], paths["eval"], paths["stream"], events, device_path, malformed)


def read_results(sink_path: Path) -> dict[str, pd.DataFrame]:
    with sqlite3.connect(sink_path) as connection:
        return {table: pd.read_sql_query(f"SELECT * FROM {table}", connection)
                for table in ("predictions", "alerts", "dead_letters")}


def summarise(data: SimulatedData, training: TrainingRun, version: ModelVersion, results: dict[str, pd.DataFrame],
              stream_seconds: float) -> dict[str, Any]:
    truth = pd.read_parquet(data.stream_truth)
    predictions, every_alert, dead = results["predictions"], results["alerts"], results["dead_letters"]
    alerts = every_alert[every_alert["kind"] == "anomaly"]
    events_in = sum(1 for _ in data.stream_events.open())
    faults = accuracy.fault_intervals_from_truth(truth)
    return {
        "model": {"name": version.name, "version": version.version, "promoted": training.registration.promoted,
                  "registry_decision": training.registration.reason,
                  "eval_f1": training.metrics.get("eval_f1"), "threshold": version.threshold},
        "events": accuracy.reconcile(events_in, len(predictions), len(dead)),
        "alerts": {"incidents": len(alerts), "still_open": int((alerts["status"] == "open").sum()),
                   "by_kind": every_alert["kind"].value_counts().to_dict()},
        "alert_accuracy": accuracy.incident_scores(alerts, faults),
        "row_accuracy": accuracy.row_scores(predictions, truth),
        "dead_letters": {"by_reason": dead["reason"].value_counts().to_dict(), "injected": data.malformed},
        "latency_ms": accuracy.latency_percentiles(predictions),
        "throughput": {"stream_seconds": round(stream_seconds, 2),
                       "events_per_second": round(events_in / stream_seconds, 1)},
    }


def train_simulated(config: Config, promote: bool = False, progress: bool = True
                    ) -> tuple[SimulatedData, TrainingRun, ModelVersion]:
    """Simulate the configured fleet, train and register a version on it, and resolve ``model.uri`` to a model
    version."""
    LOG.info("simulating %d devices", config.simulation.devices)
    data = simulate_datasets(config)
    config = with_device_metadata(config, data.devices)
    LOG.info("training and registering")
    training = train_and_register(data.train, data.eval, config.features, config.training, config.work_path,
                                  config.tracking_uri, model_name(config), pipeline_options(config), promote,
                                  progress)
    publish_trained(config, training)
    return data, training, configured_version(config)


def train_from_tables(config: Config, train: Path | None, evaluation: Path | None, promote: bool) -> TrainingRun:
    """``iotml train``: train and register a version on given tables, or on a freshly simulated fleet."""
    if train is None or evaluation is None:
        data = simulate_datasets(config)
        train, evaluation = data.train, data.eval
        config = with_device_metadata(config, data.devices)
    run = train_and_register(train, evaluation, config.features, config.training, config.work_path,
                             config.tracking_uri, model_name(config), pipeline_options(config), promote)
    publish_trained(config, run)
    return run


def simulate_to_file(sim: SimulationSettings, output: Path) -> str:
    """``iotml simulate --output``: one labelled fleet table; returns what was written."""
    frame = simulate_fleet(sim.devices, sim.duration_s, sim.interval_s, sim.seed, fault_rate=sim.fault_rate)
    path = write_frame(frame, output)
    return f"wrote {len(frame)} events of {sim.devices} devices ({int(frame['label'].sum())} faulty rows) to {path}"


def run_main_job(config: Config, promote: bool = False) -> dict[str, Any]:
    """Everything end to end on embedded defaults; writes summary.json, report.png and report.html.

    It starts from an empty results database, so it first takes the results locks of its SQLite sinks (refusing with
    ``ResultsInUse`` while a stream writes one) and holds them to the end."""
    work = config.work_path
    work.mkdir(parents=True, exist_ok=True)
    sink_path = results_path(config.sinks, work)
    if sink_path is None:
        raise ConfigError("sinks: the main job reads its results back from a SQLite sink; configure one")
    with hold_results(sqlite_paths(config.sinks, work), exclusive=True):
        delete_database(sink_path)
        return _run_main_job(config, promote, sink_path)


def delete_database(path: Path) -> None:
    """Delete a SQLite database with its WAL and shared-memory files (a stale WAL would be replayed into the next)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _run_main_job(config: Config, promote: bool, sink_path: Path) -> dict[str, Any]:
    work = config.work_path
    data, training, version = train_simulated(config, promote)
    LOG.info("streaming %s with %s v%s", data.stream_events, version.name, version.version)
    replay = config.model_copy(update={"source": ReplaySettings(path=str(data.stream_events))})
    seconds = run_pipeline(replay, version, event_rules(config, version, data.devices))
    results = read_results(sink_path)
    summary = summarise(data, training, version, results, seconds)
    truth = pd.read_parquet(data.stream_truth)
    alerts = accuracy.match_alerts(results["alerts"], accuracy.fault_intervals_from_truth(truth))
    summary["incidents"] = report.incident_records(alerts)
    png = report.plot_devices(results["predictions"], results["alerts"], truth, list(version.feature_spec.sensors),
                              work / "report.png")
    html = report.write_html(summary, png, work / "report.html", alerts, summary["dead_letters"]["by_reason"])
    summary["report"] = {"png": str(png), "html": str(html), "results": str(sink_path)}
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def model_name(config: Config) -> str:
    """The registered model name that ``model.uri`` refers to (training registers under it)."""
    return parse_model_uri(config.model.uri)[0] if is_registry_uri(config.model.uri) else "iot-anomaly"
