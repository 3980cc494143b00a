"""The AI4I failure classifier from the CLI: backtested in time order against the prior and a logistic regression on
the raw columns, registered, then served by ``configs/ai4i.yaml`` with one predicted failure enough to open an alert."""
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from inference_pipeline.cli import main
from tests.conftest import REPO, SHARED_DATA
from training.ai4i import CLASSES, ai4i_events
from training.datasets import load_ai4i

AI4I = SHARED_DATA / "ai4i2020"
pytestmark = pytest.mark.skipif(not AI4I.is_dir(), reason="needs ../shared/data/ai4i2020")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("ai4i")
    args = ["--config", str(REPO / "configs" / "ai4i.yaml"), "--work-dir", str(work)]
    assert main(["train-defects", *args, "--data", str(AI4I)]) == 0
    return work, args


def metrics_of(work):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(work / 'mlflow.db').resolve()}")
    version = client.get_model_version_by_alias("ai4i-failure", "champion")
    return client.get_run(version.run_id).data.metrics


def test_the_classifier_beats_both_baselines_and_learns_the_three_physical_failure_modes(trained):
    metrics = metrics_of(trained[0])
    assert metrics["prior_pr_auc"] == pytest.approx(265 / 7000, rel=0.01)
    assert metrics["backtest_pr_auc"] > 2 * metrics["logistic_raw_pr_auc"] > 10 * metrics["prior_pr_auc"]
    for failure in ("hdf", "pwf", "osf"):
        assert metrics[f"{failure}_pr_auc"] >= 0.9, failure
        assert metrics[f"{failure}_f1"] > 0.5, failure
    assert 0 < metrics["threshold"] < 1 and metrics["backtest_f1"] > 0.6


def test_the_stream_serves_it_by_config_and_one_predicted_failure_opens_an_alert(trained):
    work, args = trained
    assert main(["stream", *args, "--source", str(work / "ai4i" / "events.parquet")]) == 0
    with sqlite3.connect(work / "results.db") as db:
        predictions = pd.read_sql_query("SELECT * FROM predictions ORDER BY event_time", db)
        alerts = pd.read_sql_query("SELECT * FROM alerts", db)
        dead = pd.read_sql_query("SELECT * FROM dead_letters", db)
    events = ai4i_events(load_ai4i(AI4I))
    assert len(predictions) == len(events) and dead.empty
    assert predictions["label"].isin(CLASSES).all()
    probabilities = predictions["class_probabilities"].map(json.loads)
    assert np.allclose(probabilities.map(lambda p: sum(p.values())), 1.0, atol=5e-4)  # each rounded to 4 places
    assert (predictions["model_name"] == "ai4i-failure").all()
    flagged = predictions["is_anomaly"].to_numpy().astype(bool)
    failures = events.set_index("event_id").loc[predictions["event_id"], "machine_failure"].to_numpy().astype(bool)
    assert (flagged & failures).sum() > 0.5 * failures.sum()
    lone = np.flatnonzero(flagged & ~np.roll(flagged, 1) & ~np.roll(flagged, -1))
    assert len(lone) > 0
    starts = set(np.round(alerts.loc[alerts["kind"] == "anomaly", "start_time"], 3))
    assert all(round(predictions["event_time"].iloc[i], 3) in starts for i in lone)
