"""Champion vs challenger from a results database: counts, agreement, kappa and alerts computed as the stream would;
the time a version has scored in shadow; a shadow no sink records is a config error."""
import sqlite3

import pytest

from inference_pipeline.config import ConfigError, load_config
from inference_pipeline.connectors.sqlite import SCHEMA
from inference_pipeline.evaluation.shadow import compare, comparison_table, shadow_seconds
from tests.conftest import REPO

CHAMPION = [1, 1, 1, 0, 0, 0, 0, 0]
CHALLENGER = [1, 1, 1, 1, 1, 0, 1, 0]


@pytest.fixture
def results(tmp_path):
    db = tmp_path / "results.db"
    with sqlite3.connect(db) as connection:
        connection.executescript(SCHEMA)
        for table, flags, version in (("predictions", CHAMPION, "1"), ("shadow_predictions", CHALLENGER, "2")):
            connection.executemany(
                f"INSERT INTO {table} (event_id, device_id, event_time, received_at, processing_time, anomaly_score,"
                f" raw_score, threshold, is_anomaly, window_fill, model_name, model_version, late) "
                f"VALUES (?, 'd', ?, ?, ?, ?, 0, 0.5, ?, 30, 'm', ?, 0)",
                [(f"e{i}", 100.0 + i, 1000.0 + i, 1000.0 + 10 * i, 0.9 if flag else 0.1, flag, version)
                 for i, flag in enumerate(flags)])
    return db


def test_agreement_kappa_and_alerts_of_each_side(results):
    comparison, pairs = compare(results, 1000.0, 2000.0, open_after=3, close_after=2)
    assert comparison.events == len(pairs) == 8
    assert (comparison.both, comparison.champion_only, comparison.challenger_only, comparison.neither) == (3, 0, 3, 2)
    assert comparison.agreement == pytest.approx(5 / 8)
    chance = (3 / 8) * (6 / 8) + (5 / 8) * (2 / 8)
    assert comparison.kappa == pytest.approx((5 / 8 - chance) / (1 - chance))
    assert (comparison.champion.models, comparison.challenger.models) == (("m/1",), ("m/2",))
    assert (comparison.champion.alerts, comparison.challenger.alerts) == (1, 1)
    assert comparison.challenger.score_quantiles[0] == pytest.approx(0.9)
    assert "agreement on anomalies 62.50% (both 3, champion only 0, challenger only 3, neither 2)" in \
        comparison_table(comparison, 3)
    assert compare(results, 1000.0, 1004.0, 3, 2)[0].events == 4  # the period bounds received time


def test_shadow_seconds_is_the_span_of_a_versions_shadow_predictions(results):
    assert shadow_seconds(results, "m/2") == 70.0
    assert shadow_seconds(results, "m/1") == 0.0  # the champion never ran in shadow here


def test_a_shadow_that_no_sink_records_fails_at_load(tmp_path):
    with pytest.raises(ConfigError, match="model.shadow: no sink writes shadow_predictions"):
        load_config(REPO / "configs" / "local.yaml", {
            "work_dir": str(tmp_path), "model.shadow": str(tmp_path),
            "sinks": {"results": {"kind": "sqlite", "results": ["predictions", "alerts", "dead_letters"]}}})
