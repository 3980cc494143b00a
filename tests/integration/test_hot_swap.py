"""Hot swap on the live MQTT stream: `iotml stream` serving models:/swap@champion follows `promote` without a
restart. A version with another window is refused (logged, the old one kept); a good one is served within seconds,
its threshold with its weights; nothing is lost or predicted twice, and every prediction names its version."""
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.integration.test_mqtt_live import Stream, fleet_devices, kill, shared_broker, wait_until  # noqa: F401
from tests.registry_versions import register, variant
from training.register import promote_version

pytestmark = pytest.mark.services

NAME = "swap"
WATCH_S = 2


def promote_and_wait(tracking: str, name: str, version: str, process, log) -> float:
    """Promote ``version`` and wait until the stream serves it; when it was promoted."""
    promoted_at = time.time()
    promote_version(tracking, name, version)
    wait_until(lambda: f"now serving {name}/{version}" in log.read_text(), 60, process, log)
    return promoted_at


def publish_while(stream: Stream, process, log, action: Callable[[], Any], rate: float = 500, seconds: float = 10
                  ) -> tuple[int, dict[str, int], Any]:
    """Warm up, publish ``rate`` events/s for ``seconds`` and run ``action`` 2 s in; drain once every event is
    predicted: (events published, the stream's totals, what ``action`` returned)."""
    warm = stream.warm_up(process, log)
    reports = []
    feeder = threading.Thread(target=lambda: reports.append(stream.publish(rate=rate, seconds=seconds)))
    feeder.start()
    time.sleep(2)
    returned = action()
    feeder.join(60)
    published = warm.published + reports[0].published
    return published, stream.drain_when_predicted(process, log, published, settle_s=1), returned


def swapped_predictions(stream: Stream, published: int, totals: dict[str, int], promoted_at: float,
                        devices: list[str], within_s: float) -> tuple[list[tuple], str]:
    """Checks a stream's swap from version 1 to 2: every event predicted once, no dead letters, version 2 served
    within ``within_s`` of the promotion, each device's events on version 1 then 2, never back. The predictions
    (device, event time, processing time, version, raw score, anomaly score) and a summary line."""
    with sqlite3.connect(stream.db) as db:
        rows = db.execute("SELECT device_id, event_time, processing_time, model_version, raw_score, anomaly_score "
                          "FROM predictions ORDER BY device_id, event_time").fetchall()
        distinct = db.execute("SELECT COUNT(DISTINCT event_id) FROM predictions").fetchone()[0]
    versions = [row[3] for row in rows]
    switched_at = min(row[2] for row in rows if row[3] == "2")
    summary = (f"published {published}, predictions {len(rows)} ({distinct} distinct), v1 {versions.count('1')}, "
               f"v2 {versions.count('2')}, served {switched_at - promoted_at:.1f} s after promote (watch_s "
               f"{WATCH_S}), dead letters {totals['dead_letters']}, duplicates dropped {totals['duplicates']}")
    assert len(rows) == distinct == published and totals["dead_letters"] == 0, summary
    assert set(versions) == {"1", "2"} and versions.count("2") > 500, summary
    assert switched_at - promoted_at < within_s, summary
    for device in devices:  # each device's events: version 1, then version 2, never back
        sequence = [row[3] for row in rows if row[0] == device]
        assert sequence == sorted(sequence), device
    return rows, summary


def test_a_promotion_mid_stream_is_served_without_a_restart(shared_broker, trained, tmp_path, fleet_devices):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = trained.version
    second = variant(first, tmp_path / "v2", threshold=4 * first.threshold)
    for version in (first, second, variant(first, tmp_path / "v3", window=first.feature_spec.window + 5)):
        register(tracking, tmp_path, NAME, version)
    stream = Stream(tmp_path, shared_broker[1], first.path, fleet_devices)
    stream.overrides.update({"model.uri": f"models:/{NAME}@champion", "model.tracking_uri": tracking,
                             "model.watch_s": WATCH_S, "work_dir": str(tmp_path / "work")})
    process, log = stream.start()

    def promotions() -> float:
        promote_version(tracking, NAME, "3")
        wait_until(lambda: f"refused {NAME}/3" in log.read_text(), 30, process, log)
        return promote_and_wait(tracking, NAME, "2", process, log)

    try:
        published, totals, promoted_at = publish_while(stream, process, log, promotions, seconds=16)
    finally:
        kill(process)
    rows, summary = swapped_predictions(stream, published, totals, promoted_at, fleet_devices, within_s=60)
    print(f"\nhot swap: {summary}")
    log_text = log.read_text()
    assert "feature spec differs from the running graph's: window" in log_text and "still serving swap/1" in log_text
    raw, score = np.array([row[4] for row in rows]), np.array([row[5] for row in rows])
    implied = raw * (1 - score) / score  # anomaly score = raw / (raw + the version's threshold)
    for version, threshold in (("1", first.threshold), ("2", second.threshold)):
        mine = (np.array([row[3] for row in rows]) == version) & (score > 0.01) & (score < 0.99)
        assert mine.sum() > 100 and np.allclose(implied[mine], threshold, rtol=1e-3), version
