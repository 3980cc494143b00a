"""Shadow before promotion, on the live MQTT stream: a challenger (models:/shadow@challenger) scores every event
beside the champion; its predictions are recorded with its version and raise no alerts; `iotml models compare`
reports agreement, score distributions and alert counts with a plot; `promote` enforces model.min_shadow_s."""
import json
import re
import sqlite3

import pytest

from inference_pipeline.cli import main
from tests.conftest import REPO
from tests.integration.test_mqtt_live import Stream, fleet_devices, kill, shared_broker  # noqa: F401
from tests.registry_versions import register, variant
from training.register import promote_version

pytestmark = pytest.mark.services

NAME = "shadow"


def test_a_challenger_in_shadow_is_recorded_compared_and_gates_its_promotion(shared_broker, trained, tmp_path,
                                                                              fleet_devices, capsys):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = trained.version
    register(tracking, tmp_path, NAME, first)
    register(tracking, tmp_path, NAME, variant(first, tmp_path / "v2", threshold=first.threshold / 4))
    promote_version(tracking, NAME, "2", alias="challenger")
    stream = Stream(tmp_path, shared_broker[1], first.path, fleet_devices)
    stream.overrides.update({"model.uri": f"models:/{NAME}@champion", "model.shadow": f"models:/{NAME}@challenger",
                             "model.tracking_uri": tracking, "work_dir": str(tmp_path / "work")})
    process, log = stream.start()
    try:
        warm = stream.warm_up(process, log)
        published = warm.published + stream.publish(rate=400, seconds=8).published
        totals = stream.drain_when_predicted(process, log, published, settle_s=1)
    finally:
        kill(process)

    with sqlite3.connect(stream.db) as db:
        champion = dict(db.execute("SELECT event_id, model_version FROM predictions").fetchall())
        challenger = dict(db.execute("SELECT event_id, model_version FROM shadow_predictions").fetchall())
        alerting = {row[0] for row in db.execute("SELECT DISTINCT model_version FROM alerts")}
    assert totals["predictions"] == len(champion) == published and totals["dead_letters"] == 0
    assert challenger.keys() == champion.keys()
    assert set(champion.values()) == {"1"} and set(challenger.values()) == {"2"} and alerting <= {"1"}

    common = ["--config", str(REPO / "configs" / "mqtt.yaml")]
    for field, value in stream.overrides.items():
        common += ["--set", f"{field}={json.dumps(value)}"]
    plot = tmp_path / "compare.png"
    assert main(["models", "compare", "--last", "900", "--plot", str(plot), *common]) == 0
    table = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n{table}")
    assert f"{published} events scored by both" in table and f"{NAME}/1" in table and f"{NAME}/2" in table
    agreement = re.search(r"agreement on anomalies ([\d.]+)% \(both (\d+), champion only (\d+), challenger only "
                          r"(\d+), neither (\d+)\)", table)
    assert agreement and sum(map(int, agreement.groups()[1:])) == published
    assert int(agreement.group(3)) == 0 < int(agreement.group(4))  # a lower threshold: a superset of anomalies
    assert re.search(r"alerts \(open_after \d+\)\s+(\d+)\s+(\d+)", table)
    assert plot.stat().st_size > 10_000

    assert main(["models", "promote", NAME, "2", *common, "--set", "model.min_shadow_s=3600"]) == 2
    assert re.search(r"shadow v2 has scored in shadow for \d+ s, model.min_shadow_s requires 3600 s",
                     capsys.readouterr().err)
    assert main(["models", "promote", NAME, "2", *common, "--set", "model.min_shadow_s=2"]) == 0
    assert "shadow@champion: v2 (was v1)" in capsys.readouterr().out
