"""``iotml benchmark``: labelled time series scored through the streaming pipeline itself, then graded.

Each labelled series (a CSV, or every CSV under a folder; ``training.datasets.read_labelled_series``) is one device.
Its first ``train_rows`` rows are its training data, the rest its test data (SKAB's published outlier protocol:
400 rows). The job trains and registers a version on the training rows only (``training.workflow``: features,
MLTransform, the configured model, its threshold), replays every row of every series as events through the pipeline
``iotml stream`` builds (``runtime.run.run_pipeline``: parse, features, MLTransform, RunInference, scoring, alerts,
the SQLite sink), reads the predictions back by event id and grades each test row's ``is_anomaly`` against its label
(``evaluation.labelled``): point-wise F1, FAR and MAR pooled over all test rows, event-wise precision, recall and
detection delay, per series; with the "always anomalous" baseline, and for SKAB its published leaderboard.

Labels are read only for grading: training sees the training rows' readings and nothing of the test rows.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inference_pipeline.builder import pipeline_options
from inference_pipeline.config import Config, ConfigError
from inference_pipeline.connectors.replay import ReplaySettings
from inference_pipeline.connectors.sqlite import SqliteSettings, results_path
from inference_pipeline.evaluation.labelled import (
    SKAB_LEADERBOARD, BenchmarkReport, SeriesResult, format_report, grade, plot, summary_json,
)
from inference_pipeline.jobs.main_job import delete_database
from inference_pipeline.runtime.run import event_rules, run_pipeline
from model_handlers.model_version import ModelVersion
from training.datasets import LabelledSeries, read_labelled_series
from training.simulate import iter_payloads, write_frame
from training.workflow import TrainingRun, train_and_register

LOG = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "industrial.yaml"
PRESETS = {"skab": {"train_rows": 400, "timestamp_column": "datetime", "label_column": "anomaly",
                    "leaderboard": SKAB_LEADERBOARD}}


@dataclasses.dataclass(frozen=True)
class BenchmarkData:
    """The files a benchmark run writes: the training table, the replayed events, and each series' device id,
    sensors (as the pipeline names them) and event ids in row order."""

    train: Path
    events: Path
    devices: dict[str, str]
    sensors: tuple[str, ...]
    event_ids: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    report: BenchmarkReport
    text: str
    summary: dict[str, Any]
    plot: Path
    training: TrainingRun


def _name(text: str) -> str:
    """A name the pipeline takes as a sensor or device id: lower case, runs of other characters as one "_"."""
    return re.sub(r"[^0-9a-z]+", "_", text.strip().lower()).strip("_") or "x"


def write_inputs(series: list[LabelledSeries], train_rows: int, out: Path) -> BenchmarkData:
    """The training table (each series' first ``train_rows`` rows, label 0: training never reads labels) and the
    event file replaying every row of every series, each series as one device."""
    sensors = tuple(_name(s) for s in series[0].sensors)
    if len(set(sensors)) != len(sensors):
        raise ValueError(f"sensor names {series[0].sensors} collide once made pipeline names {sensors}")
    for item in series:
        if tuple(_name(s) for s in item.sensors) != sensors:
            raise ValueError(f"series {item.name} has sensors {item.sensors}; the first has {series[0].sensors}: "
                             f"one benchmark scores series of the same sensors")
    devices = {item.name: f"{_name(item.name)}-{k}" for k, item in enumerate(series)}
    train, events, event_ids = [], [], {}
    for item in series:
        if len(item.times) <= train_rows:
            raise ValueError(f"series {item.name} has {len(item.times)} rows: no test rows after {train_rows} "
                             f"training rows")
        device = devices[item.name]
        ids = np.array([f"{device}-{k}" for k in range(len(item.times))], dtype=object)
        frame = pd.DataFrame(item.values, columns=list(sensors))
        frame.insert(0, "ts", item.times)
        frame.insert(0, "device_id", device)
        frame.insert(0, "event_id", ids)
        frame["label"] = 0
        frame["fault_type"] = "none"
        train.append(frame.iloc[:train_rows])
        events.extend(iter_payloads(frame, sensors))
        event_ids[item.name] = ids
    out.mkdir(parents=True, exist_ok=True)
    train_path = write_frame(pd.concat(train, ignore_index=True), out / "train.parquet")
    events_path = out / "events.jsonl"
    events_path.write_text("\n".join(events) + "\n")
    return BenchmarkData(train_path, events_path, devices, sensors, event_ids)


def benchmark_config(config: Config, sensors: tuple[str, ...], work: Path) -> Config:
    """The config a benchmark streams with: the data's sensors, its own work folder and SQLite sink, no device
    metadata (a labelled file has none)."""
    features = config.features.model_copy(update={"sensors": sensors, "fill_values": None, "max_gap_s": None,
                                                  "derived": (), "metadata": ()})
    return config.model_copy(update={"work_dir": str(work), "features": features,
                                     "sinks": {"results": SqliteSettings()}, "enrichment": None})


def read_predictions(database: Path) -> pd.DataFrame:
    with sqlite3.connect(database) as connection:
        return pd.read_sql_query("SELECT event_id, anomaly_score, is_anomaly FROM predictions", connection)


def series_results(series: list[LabelledSeries], data: BenchmarkData, predictions: pd.DataFrame,
                   train_rows: int) -> list[SeriesResult]:
    """Each series' rows with the pipeline's decision and score, by event id; an event without a prediction is an
    error (the pipeline reconciles: every event is predicted or dead-lettered)."""
    by_id = predictions.drop_duplicates("event_id").set_index("event_id")
    results = []
    for item in series:
        rows = by_id.reindex(data.event_ids[item.name])
        missing = rows["is_anomaly"].isna()
        if missing.any():
            first = data.event_ids[item.name][int(np.flatnonzero(missing.to_numpy())[0])]
            raise RuntimeError(f"{int(missing.sum())} rows of {item.name} have no prediction (first {first}); "
                               f"see the dead letters in the results database")
        results.append(SeriesResult(item.name, item.times, item.labels.astype(np.int8),
                                    rows["is_anomaly"].to_numpy().astype(np.int8),
                                    rows["anomaly_score"].to_numpy(dtype=np.float64), train_rows))
    return results


def run_benchmark(config: Config, data_path: Path, preset: str | None = None, train_rows: int | None = None,
                  timestamp_column: str | None = None, label_column: str | None = None) -> BenchmarkResult:
    """Train on each series' first rows, stream every row through the pipeline, grade the test rows."""
    settings = PRESETS.get(preset or "", {})
    train_rows = train_rows or settings.get("train_rows", 400)
    series = read_labelled_series(data_path, timestamp_column or settings.get("timestamp_column"),
                                  label_column or settings.get("label_column"))
    work = config.work_path / "benchmark" / (preset or _name(data_path.stem))
    data = write_inputs(series, train_rows, work / "data")
    config = benchmark_config(config, data.sensors, work)
    database = results_path(config.sinks, work)
    if database is None:
        raise ConfigError("sinks: the benchmark reads its results back from a SQLite sink")
    delete_database(database)
    LOG.info("training on the first %d rows of %d series", train_rows, len(series))
    training = train_and_register(data.train, data.train, config.features, config.training, work,
                                  config.tracking_uri, f"benchmark-{preset or 'labelled'}", pipeline_options(config),
                                  False, progress=False)
    version = ModelVersion.open(training.bundle_dir)
    LOG.info("streaming %d events", sum(len(s.times) for s in series))
    replay = config.model_copy(update={"source": ReplaySettings(path=str(data.events)),
                                       "model": config.model.model_copy(update={"uri": str(training.bundle_dir)})})
    run_pipeline(replay, version, event_rules(replay, version))
    results = series_results(series, data, read_predictions(database), train_rows)
    report = grade(results)
    title = f"{preset or data_path.name}: {config.training.model} through the streaming pipeline"
    text = format_report(report, settings.get("leaderboard"), title)
    picture = plot(results, work / "benchmark.png")
    summary = summary_json(report)
    _log_to_run(config.tracking_uri, training.registration.run_id, summary)
    (work / "benchmark.json").write_text(json.dumps(summary, indent=2))
    return BenchmarkResult(report, text, summary, picture, training)


def _log_to_run(tracking_uri: str, run_id: str, summary: dict[str, Any]) -> None:
    """The benchmark's figures on the training run, so models and settings compare as MLflow runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for key, value in summary.items():
        if isinstance(value, (int, float)):
            client.log_metric(run_id, f"benchmark_{key}", float(value))
