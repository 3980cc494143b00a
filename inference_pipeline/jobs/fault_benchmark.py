"""The simulator's fault types through the whole path, over several fleets: incident recall per fault type, incident
precision and explanation accuracy (``benchmarks/fault_types.py``; a smaller run in ``make test``).

Per seed: a fleet of ``devices`` is simulated (``training.simulate``, fault definitions unchanged), the configured
model trained and registered on its fault-free history, then ``stream_s`` of it with faults at ``fault_rate`` per
device-hour replayed through the streaming pipeline; its anomaly incidents are matched to the faults
(``evaluation.accuracy.incident_scores``) and their top sensors to the sensors each fault changed
(``evaluation.accuracy.explanation_accuracy``).
"""
from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from inference_pipeline.builder import pipeline_options
from inference_pipeline.config import Config
from inference_pipeline.connectors.replay import ReplaySettings
from inference_pipeline.connectors.sqlite import SqliteSettings
from inference_pipeline.evaluation.accuracy import changed_sensors, explanation_accuracy, incident_scores
from inference_pipeline.runtime.run import event_rules, run_pipeline
from model_handlers.model_version import ModelVersion
from training.simulate import FAULT_TYPES, iter_payloads, simulate_fleet, write_frame
from training.workflow import train_and_register

START = 1767225600.0


@dataclasses.dataclass(frozen=True)
class SeedRun:
    """One fleet's anomaly incidents and its faults (with the sensors each changed), device ids prefixed by seed."""

    alerts: pd.DataFrame
    faults: pd.DataFrame


def seed_run(config: Config, seed: int, devices: int, stream_s: float, fault_rate: float, work: Path) -> SeedRun:
    """Train on a fleet's fault-free history, stream ``stream_s`` of it with faults, return incidents and faults."""
    sim = config.simulation
    work = work / f"seed-{seed}"
    sensors = config.features.sensors
    train = write_frame(simulate_fleet(devices, sim.train_duration_s, sim.interval_s, seed, START, 0.0),
                        work / "train.parquet")
    later = START + sim.train_duration_s
    evaluation = write_frame(simulate_fleet(devices, 1800.0, sim.interval_s, seed, later, fault_rate),
                             work / "eval.parquet")
    begin = later + 1800.0
    faulted = simulate_fleet(devices, stream_s, sim.interval_s, seed, begin, fault_rate)
    faults = changed_sensors(faulted, simulate_fleet(devices, stream_s, sim.interval_s, seed, begin, 0.0), sensors)
    run = train_and_register(train, evaluation, config.features, config.training, work, config.tracking_uri,
                             f"faults-{seed}", pipeline_options(config), False, progress=False)
    version = ModelVersion.open(run.bundle_dir)
    stream, database = work / "stream.jsonl", work / "results.db"
    stream.write_text("\n".join(iter_payloads(faulted, sensors)) + "\n")
    database.unlink(missing_ok=True)
    streaming = config.model_copy(update={
        "work_dir": str(work), "source": ReplaySettings(path=str(stream)),
        "model": config.model.model_copy(update={"uri": str(run.bundle_dir)}),
        "sinks": {"results": SqliteSettings(path=str(database))}, "enrichment": None})
    run_pipeline(streaming, version, event_rules(streaming, version))
    with sqlite3.connect(database) as connection:
        alerts = pd.read_sql_query("SELECT * FROM alerts WHERE kind = 'anomaly'", connection)
    prefix = f"{seed}/"
    return SeedRun(alerts.assign(device_id=prefix + alerts["device_id"].astype(str)),
                   faults.assign(device_id=prefix + faults["device_id"].astype(str)))


def fault_benchmark(config: Config, seeds: list[int], devices: int, stream_s: float, fault_rate: float,
                    work: Path) -> dict[str, Any]:
    """Every seed's run pooled: incident recall per fault type, incident precision (overall and by the fault type
    an alert matched), explanation accuracy, and the counts behind them."""
    config = config.model_copy(update={"work_dir": str(work), "enrichment": None,
                                       "features": config.features.model_copy(update={"metadata": ()})})
    runs = [seed_run(config, seed, devices, stream_s, fault_rate, work) for seed in seeds]
    alerts = pd.concat([run.alerts for run in runs], ignore_index=True)
    faults = pd.concat([run.faults for run in runs], ignore_index=True)
    scores = incident_scores(alerts, faults)
    return {"seeds": seeds, "faults": faults["fault_type"].value_counts().reindex(FAULT_TYPES, fill_value=0).to_dict(),
            "incidents": scores, "explanations": explanation_accuracy(alerts, faults)}


def fault_table(result: dict[str, Any]) -> str:
    """The per-fault-type table: faults, recall, explanation accuracy; then precision and the totals."""
    incidents, explanations = result["incidents"], result["explanations"]
    lines = [f"{'fault type':<14} {'faults':>6} {'recall':>7} {'top sensor right':>17}"]
    for kind in FAULT_TYPES:
        explained = explanations["by_fault_type"].get(kind, {})
        share = explained.get("share")
        lines.append(f"{kind:<14} {result['faults'][kind]:>6} {incidents['recall_by_fault_type'].get(kind, 0.0):>7.3f} "
                     f"{'n/a' if share is None else f'{share:.3f}':>17}")
    lines.append(f"incident precision {incidents['precision']:.3f} ({incidents['counts']['true_positive_alerts']} of "
                 f"{incidents['counts']['alerts']} alerts on a fault); recall {incidents['recall']:.3f}; explanation "
                 f"accuracy {explanations['share'] or 0.0:.3f} over {explanations['incidents']} incidents; "
                 f"seeds {result['seeds']}")
    return "\n".join(lines)
