"""The device roster bounds per-device state and notices silent devices; on the whole graph, a flood of new device
ids never makes any stateful step hold more devices than the cap, and counts still reconcile."""
import sqlite3

import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter

from features.schema import DeviceNotice, event_payload
from features.window import WindowState
from inference_pipeline.builder import create_pipeline
from inference_pipeline.runtime.run import event_rules, outcome_counts, run_graph
from inference_pipeline.results import PredictionBatch
from inference_pipeline.steps.alerts import DebounceState, track_silence
from inference_pipeline.steps.roster import DeviceRoster, FleetSettings
from tests.inference_pipeline.test_builder import replay_config


def test_a_silent_device_is_noticed_once_then_expires():
    roster = DeviceRoster(FleetSettings(silent_after_s=10, expire_after_s=100, check_every_s=1))
    roster.seen("a", 0.0)
    roster.seen("b", 5.0)
    assert list(roster.due(9.0)) == []
    assert list(roster.due(12.0)) == [("a", DeviceNotice(DeviceNotice.SILENT, 0.0))]
    assert list(roster.due(13.0)) == []
    roster.seen("b", 13.5)
    assert list(roster.due(101.0)) == [("b", DeviceNotice(DeviceNotice.SILENT, 13.5)),
                                       ("a", DeviceNotice(DeviceNotice.EXPIRE, 0.0))]
    assert list(roster.due(110.0)) == [] and len(roster) == 1
    assert list(roster.due(114.0)) == [("b", DeviceNotice(DeviceNotice.EXPIRE, 13.5))] and len(roster) == 0


def test_the_cap_drops_the_longest_silent_device_before_a_new_one_is_admitted():
    roster = DeviceRoster(FleetSettings(max_devices=2, silent_after_s=10, expire_after_s=100))
    assert roster.seen("a", 0.0) == [] and roster.seen("b", 1.0) == []
    list(roster.due(10.5))  # a is reported silent
    roster.seen("b", 11.0)
    assert roster.seen("c", 12.0) == [("a", DeviceNotice(DeviceNotice.EXPIRE, 0.0))]
    assert roster.seen("d", 13.0) == [("b", DeviceNotice(DeviceNotice.EXPIRE, 11.0))]
    assert len(roster) == 2


def test_settings_refuse_an_expiry_before_the_silence():
    with pytest.raises(ValueError, match="silent_after_s"):
        FleetSettings(silent_after_s=100, expire_after_s=50)


def _batch(times, notice=None):
    times = np.asarray(times, dtype=float)
    return PredictionBatch("d", times.astype(str).astype(object), times, times, 0.0, np.zeros(len(times)),
                           np.zeros(len(times)), 0.5, np.full(len(times), 30), 30, "m", "1",
                           state=WindowState(np.zeros((0, 1))), notice=notice)


def test_device_silent_opens_on_the_notice_and_closes_with_the_next_event():
    state = DebounceState()
    assert list(track_silence(state, _batch([1.0, 2.0]))) == []
    [opened] = track_silence(state, _batch([], DeviceNotice(DeviceNotice.SILENT, 50.0)))
    assert (opened.kind, opened.status, opened.start_time, opened.incident_id) == (
        "device_silent", "open", 2.0, "d:device_silent:2.000")
    assert list(track_silence(state, _batch([], DeviceNotice(DeviceNotice.SILENT, 60.0)))) == []
    [closed] = track_silence(state, _batch([90.0, 91.0]))
    assert (closed.status, closed.end_time, closed.incident_id) == ("closed", 90.0, opened.incident_id)


def test_a_flood_of_new_device_ids_never_holds_more_states_than_the_cap(trained, tmp_path):
    sensors = trained.version.feature_spec.sensors
    rng = np.random.default_rng(0)
    readings = [dict(zip(sensors, row)) for row in rng.normal(size=(3005, len(sensors))).tolist()]
    payloads = [event_payload(f"flood-{i}", 1767300000.0 + i / 1000, readings[i]) for i in range(3000)]
    payloads += [event_payload("flood-1", 1767300004.0 + i, readings[3000 + i]) for i in range(5)]
    stream = tmp_path / "flood.jsonl"
    stream.write_text("\n".join(payloads) + "\n")
    config = replay_config(trained, stream, tmp_path / "results.db", batch_size=500)
    config = config.model_copy(update={"devices": FleetSettings(max_devices=200)})
    graph = create_pipeline(config, trained.version, event_rules(config, trained.version))
    _, result = run_graph(graph)

    distributions = {d.key.metric.name: d.committed for d in result.metrics().query(
        MetricsFilter().with_namespace("iotml"))["distributions"]}
    for name in ("tracked_devices", "dedup_states", "window_states", "alert_states"):
        assert 0 < distributions[name].max <= 200, name
    counts = outcome_counts(result)
    assert counts["predictions"] + counts["dead_letters"] == len(payloads)
    with sqlite3.connect(tmp_path / "results.db") as db:
        returned = db.execute("SELECT window_fill FROM predictions WHERE device_id = 'flood-1' "
                              "ORDER BY event_time").fetchall()
    # back within the gap limit, but its state was dropped at the cap: it warms up again
    assert [fill for fill, in returned] == [1, 1, 2, 3, 4, 5]
