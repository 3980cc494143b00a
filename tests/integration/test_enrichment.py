"""The stream enriched from a real Feast store on Redis: a device the store lacks gets the defaults (flagged,
counted), and a store killed mid-stream and restarted never stalls the stream nor loses an event."""
import sqlite3
import time
import uuid

import pandas as pd
import pytest

from inference_pipeline.config import load_config
from inference_pipeline.jobs.features import push_device_metadata
from inference_pipeline.runtime.run import event_rules, run_graph
from inference_pipeline.builder import create_pipeline
from tests.conftest import ENRICHED, REPO
from tests.integration.test_hot_swap import publish_while
from tests.integration.test_mqtt_live import Stream, fleet_devices, kill, shared_broker  # noqa: F401  (fixtures)
from tests.redis_server import private_redis  # noqa: F401  (fixture)
from training.simulate import device_table, iter_payloads, simulate_fleet

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _config(tmp_path, trained, stream, address, **enrichment):
    return load_config(REPO / "configs" / "local.yaml", {
        **ENRICHED, "work_dir": str(tmp_path), "model.uri": str(trained.version.path),
        "source": {"kind": "replay", "path": str(stream), "batch_size": 100, "rate": enrichment.pop("rate", None)},
        "enrichment": {"store": {"store": "feast", "repo": str(tmp_path / "repo"),
                                 "project": f"t{uuid.uuid4().hex[:10]}", "online_store": address}, **enrichment}})


def _stream(tmp_path, devices, seconds):
    frame = simulate_fleet(devices, seconds, seed=21, start=1767400000.0, fault_rate=0.0)
    payloads = list(iter_payloads(frame, frame.columns[2:10])) + ["{broken"]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(payloads) + "\n")
    return frame, path, len(payloads)


def _run(config, trained):
    graph = create_pipeline(config, trained.version, event_rules(config, trained.version))
    seconds, result = run_graph(graph)
    with sqlite3.connect(config.work_path / "results.db") as db:
        predictions = pd.read_sql("SELECT device_id, event_id, processing_time, enrichment FROM predictions", db)
        dead = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    counters = {m.key.metric.name: m.committed for m in result.metrics().query()["counters"]}
    return seconds, predictions, dead, counters


def test_a_device_missing_from_the_store_gets_defaults_flagged_and_counted(tmp_path, trained_enriched):
    frame, stream, sent = _stream(tmp_path, 3, 120)
    devices = sorted(frame["device_id"].unique())
    config = _config(tmp_path, trained_enriched, stream, "127.0.0.1:6379")
    table = device_table(devices[1:])  # the first device is not in the asset register
    table.to_csv(tmp_path / "devices.csv", index=False)
    assert push_device_metadata(config, tmp_path / "devices.csv") == 2
    _, predictions, dead, counters = _run(config, trained_enriched)
    assert len(predictions) + dead == sent and dead == 1
    assert predictions.groupby(["device_id", "event_id"]).size().max() == 1
    flags = predictions.groupby("device_id")["enrichment"].agg(set).to_dict()
    assert flags == {devices[0]: {"missing"}, devices[1]: {"ok"}, devices[2]: {"ok"}}
    assert counters["enrichment_missing_keys"] >= 1 and counters.get("enrichment_store_errors", 0) == 0


def test_a_version_using_metadata_without_a_store_fails_at_start_naming_enrichment(tmp_path, trained_enriched):
    _, stream, _ = _stream(tmp_path, 1, 10)
    config = _config(tmp_path, trained_enriched, stream, "127.0.0.1:6379")
    config = config.model_copy(update={"enrichment": None})
    with pytest.raises(ValueError, match=r"^enrichment: .* uses device metadata features"):
        create_pipeline(config, trained_enriched.version, event_rules(config, trained_enriched.version))


def test_a_store_killed_mid_stream_and_restarted_loses_nothing_and_never_stalls(
        shared_broker, trained_enriched, tmp_path, fleet_devices, private_redis):
    """A live MQTT stream at 500 events/s; 2 s in, the store is killed for 2 s, then restarted (its data on disk)."""
    stream = Stream(tmp_path, shared_broker[1], trained_enriched.version.path, fleet_devices)
    enrichment = {"store": {"store": "feast", "repo": str(tmp_path / "repo"), "project": f"t{stream.tag}",
                            "online_store": private_redis.address},
                  "cache_ttl_s": 0.2, "cooldown_s": 0.5, "timeout_s": 0.2}
    config = _config(tmp_path, trained_enriched, tmp_path / "unused.jsonl", private_redis.address)
    config = config.model_copy(update={"enrichment": config.enrichment.model_validate(enrichment)})
    device_table(fleet_devices).to_csv(tmp_path / "devices.csv", index=False)
    push_device_metadata(config, tmp_path / "devices.csv")
    stream.overrides.update({"enrichment": enrichment, "work_dir": str(tmp_path / "work")})
    process, log = stream.start()

    def outage() -> None:
        private_redis.kill()
        time.sleep(2)
        private_redis.start()

    try:
        published, totals, _ = publish_while(stream, process, log, outage, seconds=8)
    finally:
        kill(process)
    with sqlite3.connect(stream.db) as db:
        predictions = pd.read_sql("SELECT event_id, processing_time, received_at, enrichment FROM predictions", db)
    assert len(predictions) == predictions["event_id"].nunique() == published == totals["predictions"]
    assert totals["dead_letters"] == 0
    flags = predictions.sort_values("processing_time")["enrichment"].tolist()
    assert "stale" in flags and flags[-1] == "ok", pd.Series(flags).value_counts()
    assert flags.index("stale") < len(flags) - 1 - flags[::-1].index("ok")  # the store again once back
    outage_from = predictions.loc[predictions["enrichment"] == "stale", "received_at"].min() - 1.0
    during = predictions[predictions["received_at"] >= outage_from]  # from just before the outage to the end
    latency = during["processing_time"] - during["received_at"]
    assert latency.max() < 2.0, latency.describe()  # the store's outage never stalled the stream
