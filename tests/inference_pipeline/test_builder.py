"""The streaming pipeline on the local runner: malformed events go to dead letters while good events flow."""
import json
import sqlite3

import pandas as pd

from features.schema import DeadLetterReason
from inference_pipeline.runtime.run import event_rules, run_pipeline
from training.malformed import KINDS, corrupt
from training.simulate import iter_payloads, simulate_fleet


def test_malformed_events_land_in_dead_letters_and_counts_reconcile(trained, tmp_path):
    frame = simulate_fleet(4, 120, seed=trained.config.simulation.seed, start=1767300000.0, fault_rate=0)
    good = list(iter_payloads(frame, trained.bundle.feature_spec.sensors))
    bad = [corrupt(good[i], kind) for i, kind in enumerate(KINDS)]
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join(bad[:3] + good + bad[3:]) + "\n")
    config = trained.config.model_copy(update={
        "source": trained.config.source.model_copy(update={"kind": "replay", "path": str(stream), "batch_size": 97}),
        "sinks": trained.config.sinks.model_copy(update={"path": str(tmp_path / "results.db")}),
    })
    run_pipeline(config, trained.bundle, event_rules(config, trained.bundle, trained.data.devices))

    with sqlite3.connect(tmp_path / "results.db") as db:
        predictions = pd.read_sql_query("SELECT * FROM predictions", db)
        dead = pd.read_sql_query("SELECT * FROM dead_letters", db)
    assert len(predictions) + len(dead) == len(good) + len(bad)
    assert sorted(dead["reason"]) == sorted(KINDS)
    assert set(predictions["event_id"]) == set(frame["event_id"])
    assert predictions["anomaly_score"].between(0, 1).all()
    assert (predictions["model_name"] == trained.bundle.name).all()
    assert (predictions["model_version"] == trained.bundle.version).all()
    assert (predictions["processing_time"] >= predictions["received_at"]).all()
    unknown = dead[dead["reason"] == DeadLetterReason.UNKNOWN_DEVICE].iloc[0]
    assert json.loads(unknown["payload"])["device_id"] == "ghost-999" and "ghost-999" in unknown["detail"]
    warming = predictions[predictions["window_fill"] < trained.bundle.feature_spec.window]
    assert len(warming) == 4 * (trained.bundle.feature_spec.window - 1) and (warming["is_anomaly"] == 0).all()
