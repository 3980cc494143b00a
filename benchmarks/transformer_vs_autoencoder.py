"""The PatchTST forecaster (``model.handler: transformers``) against the autoencoder (``torch``) on the simulator.

Both are trained by the same workflow on the same fault-free history (``configs/local.yaml`` and
``configs/transformer.yaml``, the same simulation) and registered as MLflow runs (models ``iot-anomaly`` and
``iot-transformer``), then each replays the same labelled stream through the streaming pipeline
(``iotml stream``'s graph, its own handler kind). Per model: incident precision/recall/F1 and recall per fault type,
row precision/recall/false-alarm rate and row recall per fault type, and the CPU throughput of the replay (events/s,
start-up included). The figures are logged to each model's MLflow run (``stream_*`` metrics) and printed as a table,
with a JSON last line.

    python benchmarks/transformer_vs_autoencoder.py [--devices 6] [--epochs 20] [--work-dir work/compare]
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path

import mlflow
import pandas as pd

from inference_pipeline.builder import pipeline_options
from inference_pipeline.config import Config, load_config
from inference_pipeline.connectors.replay import ReplaySettings
from inference_pipeline.connectors.sqlite import SqliteSettings
from inference_pipeline.evaluation import accuracy
from inference_pipeline.jobs.main_job import simulate_datasets
from inference_pipeline.runtime.run import event_rules, run_pipeline
from model_handlers.resolve import resolve_model_version
from training.workflow import train_and_register

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # label: (registered name, deployment config)
    "autoencoder": ("iot-anomaly", "local.yaml"),
    "patchtst": ("iot-transformer", "transformer.yaml"),
}


def evaluate(config: Config, name: str, data, truth: pd.DataFrame, work: Path) -> dict[str, float]:
    """Replay the labelled stream through the pipeline with ``name``'s champion; its accuracy and throughput."""
    version = resolve_model_version(f"models:/{name}@champion", config.tracking_uri, work / "models")
    db = work / f"{name}.db"
    db.unlink(missing_ok=True)
    replay = config.model_copy(update={"source": ReplaySettings(path=str(data.stream_events)),
                                       "sinks": {"results": SqliteSettings(path=str(db))}})
    started = time.perf_counter()
    run_pipeline(replay, version, event_rules(config, version, data.devices))
    seconds = time.perf_counter() - started
    with sqlite3.connect(db) as connection:
        predictions = pd.read_sql_query("SELECT event_id, is_anomaly FROM predictions", connection)
        alerts = pd.read_sql_query("SELECT * FROM alerts", connection)
    incidents = accuracy.incident_scores(alerts, accuracy.fault_intervals_from_truth(truth))
    rows = accuracy.row_scores(predictions, truth)
    joined = predictions.merge(truth[["event_id", "fault_type"]], on="event_id")
    figures = {"incident_precision": incidents["precision"], "incident_recall": incidents["recall"],
               "incident_f1": incidents["f1"], "row_precision": rows["precision"], "row_recall": rows["recall"],
               "row_false_alarm_rate": rows["far"], "events_per_s": len(predictions) / seconds}
    figures.update({f"incident_recall_{kind}": value for kind, value in incidents["recall_by_fault_type"].items()})
    figures.update({f"row_recall_{kind}": float(value) for kind, value in
                    joined[joined["fault_type"] != "none"].groupby("fault_type")["is_anomaly"].mean().items()})
    return {key: (None if value is None else round(float(value), 4)) for key, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "compare")
    args = parser.parse_args()
    base = {"work_dir": str(args.work_dir), "simulation.devices": args.devices, "simulation.train_duration_s": 7200,
            "simulation.duration_s": 3600, "simulation.fault_rate": 3, "training.epochs": args.epochs}
    data, truth, results = None, None, {}
    for label, (name, deployment) in MODELS.items():
        config = load_config(REPO / "configs" / deployment, base)
        if data is None:
            data = simulate_datasets(config)
            truth = pd.read_parquet(data.stream_truth)
        run = train_and_register(data.train, data.eval, config.features, config.training, config.work_path,
                                 config.tracking_uri, name, pipeline_options(config), promote=True, progress=False)
        results[label] = evaluate(config, name, data, truth, config.work_path)
        mlflow.set_tracking_uri(config.tracking_uri)
        with mlflow.start_run(run_id=run.registration.run_id):
            mlflow.log_metrics({f"stream_{key}": value for key, value in results[label].items() if value is not None})
    table = pd.DataFrame(results)
    print(table.to_string())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
