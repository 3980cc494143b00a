"""The live MQTT stream scored by a remote model server (``model.handler: http_endpoint`` on ``mlflow models serve``
of the model version): the server is killed mid-stream and restarted; every event is predicted after the retries or
dead-lettered with its reason, nothing is lost or predicted twice, and the stream recovers without a restart.

While the retries hold a batch the stream acknowledges nothing, so the broker queues what is published meanwhile: a
private Mosquitto with a queue deep enough for the outage (the stock one keeps 1,000 per session; README:
operations)."""
import sqlite3
import threading
import time

import pytest

from tests.integration.test_mqtt_live import Stream, drain, fleet_devices, kill, private_broker, wait_until  # noqa: F401
from tests.model_servers import ModelServer

pytestmark = pytest.mark.services


def outcomes(stream: Stream) -> tuple[int, int, int]:
    """(prediction rows, distinct predicted events, dead letters) in the stream's sink."""
    rows, distinct = stream.predictions()
    if not stream.db.exists():
        return rows, distinct, 0
    with sqlite3.connect(stream.db, timeout=30) as db:
        try:
            return rows, distinct, db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        except sqlite3.OperationalError:
            return rows, distinct, 0


def test_the_model_server_killed_and_restarted_mid_stream(private_broker, trained, tmp_path, fleet_devices):
    version = trained.version
    stream = Stream(tmp_path, private_broker.port, version.path, fleet_devices)
    with ModelServer(str(version.path), None, tmp_path / "serve.log") as server:
        stream.overrides.pop("model.uri")
        stream.overrides["model"] = {"handler": "http_endpoint", "uri": str(version.path), "url": server.url,
                                     "timeout_s": 5, "num_retries": 3}
        process, log = stream.start()
        try:
            warm = stream.warm_up(process, log)
            reports = []
            feeder = threading.Thread(target=lambda: reports.append(stream.publish(rate=500, seconds=14)))
            feeder.start()
            wait_until(lambda: outcomes(stream)[0] >= warm.published + 1000, 60, process, log)
            server.kill()
            killed_at, at_kill = time.time(), outcomes(stream)[0]
            time.sleep(3)
            server.start()
            restarted_at = time.time()
            feeder.join(60)
            published = warm.published + reports[0].published
            wait_until(lambda: sum(outcomes(stream)[1:]) >= published, 120, process, log)
            totals = drain(process, log)
        finally:
            kill(process)
    rows, distinct, dead = outcomes(stream)
    with sqlite3.connect(stream.db) as db:
        reasons = {reason for (reason,) in db.execute("SELECT DISTINCT reason FROM dead_letters")}
        after = db.execute("SELECT COUNT(*) FROM predictions WHERE processing_time > ?", (restarted_at,)).fetchone()[0]
    retries = log.read_text().count("exception raised as part of request")  # each failed try, before its retry
    print(f"\nmodel server restart: published {published}, {at_kill} predicted when it was killed, down "
          f"{restarted_at - killed_at:.1f} s; predictions {rows} ({distinct} distinct, {after} after the restart), "
          f"dead letters {dead} {sorted(reasons)}, retries logged {retries}")
    assert rows == distinct and rows + dead == published
    assert totals == {"predictions": rows, "dead_letters": dead, "duplicates": totals["duplicates"]}
    assert reasons <= {"inference_error"}
    assert retries > 0 and after > 0
