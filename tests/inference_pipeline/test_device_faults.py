"""Real devices misbehave, and the stream keeps monitoring them: a dead sensor's readings are imputed and flagged and
open one ``sensor_missing`` incident; events older than the device's newest are scored without entering its window
and flagged ``late``; a long gap in time restarts the device's window. Counts still reconcile."""
import json
import sqlite3

import numpy as np
import pandas as pd

from inference_pipeline.runtime.run import event_rules, run_pipeline
from tests.inference_pipeline.test_builder import replay_config
from training.simulate import iter_payloads, simulate_fleet


def test_missing_readings_late_events_and_gaps_on_the_whole_graph(trained, tmp_path):
    spec = trained.version.feature_spec
    dead_sensor = spec.sensors[0]
    frame = simulate_fleet(2, 200, seed=trained.config.simulation.seed, start=1767300000.0, fault_rate=0)
    devices = sorted(frame["device_id"].unique())
    first = frame["device_id"] == devices[0]
    silent = first & frame.index.isin(frame[first].index[60:85])
    frame.loc[silent, dead_sensor] = np.nan
    gap_at = frame[first].index[150]
    frame.loc[first & (frame.index >= gap_at), "ts"] += 10 * spec.max_gap_s
    late = frame[frame["device_id"] == devices[1]].iloc[[10, 20, 30]].assign(
        event_id=lambda rows: rows["event_id"] + "-late")
    payloads = list(iter_payloads(frame, spec.sensors)) + list(iter_payloads(late, spec.sensors))
    stream = tmp_path / "events.jsonl"
    stream.write_text("\n".join(payloads) + "\n")
    config = replay_config(trained, stream, tmp_path / "results.db", batch_size=50)
    config = config.model_copy(update={"alerting": config.alerting.model_copy(update={"sensor_missing_after": 10})})
    run_pipeline(config, trained.version, event_rules(config, trained.version, trained.data.devices))

    with sqlite3.connect(tmp_path / "results.db") as db:
        predictions = pd.read_sql_query("SELECT * FROM predictions", db).set_index("event_id")
        dead = pd.read_sql_query("SELECT * FROM dead_letters", db)
        alerts = pd.read_sql_query("SELECT * FROM alerts WHERE kind = 'sensor_missing'", db)
    assert len(predictions) == len(payloads) and dead.empty
    assert set(predictions.index[predictions["late"] == 1]) == set(late["event_id"])
    second = frame[frame["device_id"] == devices[1]]
    on_time = predictions.loc[second["event_id"], "window_fill"].to_numpy()
    assert (on_time == np.minimum(np.arange(1, len(second) + 1), spec.window)).all()  # the window never took them

    flagged = predictions.loc[frame.loc[silent, "event_id"], "imputed"]
    assert all(json.loads(value) == [dead_sensor] for value in flagged)
    assert predictions.drop(index=frame.loc[silent, "event_id"])["imputed"].isna().all()
    assert np.isfinite(predictions["anomaly_score"]).all()
    [incident] = alerts.itertuples()
    assert (incident.device_id, incident.sensor, incident.status) == (devices[0], dead_sensor, "closed")
    assert incident.start_time == frame.loc[silent, "ts"].min() and incident.end_time == frame.loc[silent, "ts"].max()

    fill = predictions.loc[frame.loc[first, "event_id"], "window_fill"].to_numpy()
    assert fill[150] == 1 and fill[149] == spec.window and (fill[150:150 + spec.window] == np.arange(1, spec.window + 1)).all()
