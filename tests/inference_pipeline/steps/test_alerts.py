import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to

from features.schema import DeviceNotice
from features.window import WindowState
from inference_pipeline.results import DeviceSnapshot, Incident, PredictionBatch
from inference_pipeline.steps.alerts import (
    AlertSettings,
    DebounceState,
    TrackIncidents,
    debounce,
    track_missing,
    track_silence,
)


def batch(scores, start=0.0, device="pump-1", fill=30, imputed=None, contributions=None):
    scores = np.asarray(scores, dtype=float)
    times = start + np.arange(len(scores), dtype=float)
    return PredictionBatch(device, times.astype(str), times, times, 0.0, scores, scores, 0.5,
                           np.full(len(scores), fill), 30, "m", "1", imputed=imputed,
                           sensor_contributions=contributions, state=WindowState(np.zeros((0, 2)), float(times[-1])))


def shares(a, b, c, d):
    return {"a": a, "b": b, "c": c, "d": d}


# An anomalous row whose run breaks (not counted), a run of three that opens an incident, a normal row within
# close_after, one more anomalous row, two normal rows that close it, then a new pending run.
SCORES = [0.9, 0.1, 0.9, 0.9, 0.9, 0.1, 0.9, 0.1, 0.1, 0.9]
SHARES = [shares(1.0, 0, 0, 0), None, shares(0.1, 0.6, 0.3, 0.0), shares(0.2, 0.5, 0.3, 0.0),
          shares(0.3, 0.4, 0.1, 0.2), None, shares(0.9, 0.05, 0.05, 0.0), None, None, shares(0, 0, 0, 1.0)]
# Means over rows 2-4 when it opens: a 0.6/3, b 1.5/3, c 0.7/3, d 0.2/3; over rows 2-4 and 6 when it closes:
# a 1.5/4, b 1.55/4, c 0.75/4, d 0.2/4.
OPENED = [{"sensor": "b", "share": 0.5}, {"sensor": "c", "share": 0.2333}, {"sensor": "a", "share": 0.2}]
CLOSED = [{"sensor": "b", "share": 0.3875}, {"sensor": "a", "share": 0.375}, {"sensor": "c", "share": 0.1875}]


def explained(cut=None, round_trip=False):
    """The incidents of SCORES and SHARES, in one batch or two split at ``cut`` (the state through JSON between
    them if ``round_trip``), and the state after."""
    state, cuts = DebounceState(), [0, *([cut] if cut else []), len(SCORES)]
    incidents = []
    for lo, hi in zip(cuts, cuts[1:]):
        if round_trip:
            state = DebounceState.from_json(json.loads(json.dumps(state.to_json())))
        incidents += debounce(state, batch(SCORES[lo:hi], start=lo, contributions=SHARES[lo:hi]), 3, 2)
    return incidents, state


def test_an_incident_opens_after_consecutive_anomalies_and_closes_after_normal_rows():
    state = DebounceState()
    incidents = list(debounce(state, batch([0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.95, 0.2, 0.2, 0.2, 0.9]), 3, 3))
    assert [(i.status, i.start_time, i.end_time) for i in incidents] == [("open", 3.0, None), ("closed", 3.0, 6.0)]
    assert incidents[1].peak_score == 0.95 and incidents[1].n_events == 4
    assert state.open is None and state.anomalous_run == 1


def test_isolated_anomalies_open_an_incident_when_no_more_than_open_gap_normal_rows_part_them():
    spikes = [0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9] + [0.1] * 6
    assert list(debounce(DebounceState(), batch(spikes), 3, 3)) == []  # in a row (open_gap 0): never
    incidents = list(debounce(DebounceState(), batch(spikes), 3, 3, open_gap=3))
    assert [(i.status, i.start_time, i.end_time, i.n_events) for i in incidents] == [
        ("open", 0.0, None, 3), ("closed", 0.0, 7.0, 3)]
    assert list(debounce(DebounceState(), batch(spikes), 3, 3, open_gap=2)) == []  # a gap of 3 breaks the run
    split = DebounceState()  # and a pending run survives a batch boundary
    assert list(debounce(split, batch(spikes[:5]), 3, 3, open_gap=3)) == []
    assert [i.status for i in debounce(split, batch(spikes[5:], start=5.0), 3, 3, open_gap=3)] == ["open", "closed"]


def test_an_incident_spans_batches_and_reports_once():
    state = DebounceState()
    first = list(debounce(state, batch([0.9] * 5), 2, 2))
    second = list(debounce(state, batch([0.9] * 5 + [0.1] * 2, start=5), 2, 2))
    assert [i.status for i in first + second] == ["open", "closed"]
    assert second[0].start_time == 0.0 and second[0].end_time == 9.0 and second[0].n_events == 10


def test_a_device_warming_up_never_alerts():
    state = DebounceState()
    assert list(debounce(state, batch([0.99] * 10, fill=5), 1, 1)) == []


def test_debounce_keeps_state_per_device_on_a_stream():
    stream = (EventStream()
              .add_elements([("a", batch([0.9, 0.9], device="a")), ("b", batch([0.9], device="b"))])
              .advance_watermark_to(10)
              .add_elements([("a", batch([0.1, 0.1], start=2, device="a")), ("b", batch([0.9], start=1, device="b"))])
              .advance_watermark_to_infinity())
    with beam.Pipeline(options=PipelineOptions([], runner="BundleBasedDirectRunner", streaming=True)) as pipeline:
        results = pipeline | stream | TrackIncidents(AlertSettings(open_after=2, close_after=2))
        rows = results | beam.FlatMap(lambda r: [(i.device_id, i.status, i.start_time, i.end_time)
                                                 for i in r.incidents])
        assert_that(rows, equal_to([("a", "open", 0.0, None), ("a", "closed", 0.0, 1.0), ("b", "open", 0.0, None)]))


def test_a_sensor_missing_for_a_run_of_events_opens_one_incident_that_closes_when_it_reports_again():
    state = DebounceState()
    gaps = [["flow"]] * 4 + [None] + [["flow", "rpm"]] * 3 + [["rpm"]]
    incidents = list(track_missing(state, batch([0.1] * 9, imputed=gaps), after=3))
    assert [(i.kind, i.sensor, i.status, i.start_time, i.end_time) for i in incidents] == [
        ("sensor_missing", "flow", "open", 0.0, None), ("sensor_missing", "flow", "closed", 0.0, 3.0),
        ("sensor_missing", "flow", "open", 5.0, None), ("sensor_missing", "rpm", "open", 5.0, None),
        ("sensor_missing", "flow", "closed", 5.0, 7.0)]
    assert incidents[0].incident_id == "pump-1:sensor_missing:flow:0.000" and incidents[1].n_events == 4
    assert set(state.missing) == {"rpm"} and state.missing["rpm"].open is not None


def test_alerting_state_round_trips_through_json_with_open_incidents():
    state = DebounceState()
    list(debounce(state, batch([0.9] * 4), 3, 3))
    list(track_missing(state, batch([0.1] * 3, imputed=[["flow"]] * 3), after=2))
    restored = DebounceState.from_json(json.loads(json.dumps(state.to_json())))
    assert restored == state and isinstance(restored.open, Incident)


def test_a_restored_device_continues_its_incident_and_sends_its_last_updates_again():
    earlier = DebounceState()
    opened = list(debounce(earlier, batch([0.9] * 3), 3, 2))
    snapshot = DeviceSnapshot("pump-1", WindowState(np.zeros((0, 2))), earlier.to_json(), opened, 0.0)
    stream = EventStream().add_elements([("pump-1", batch([0.9, 0.1, 0.1], start=3))]).advance_watermark_to_infinity()
    with beam.Pipeline(options=PipelineOptions([], runner="BundleBasedDirectRunner", streaming=True)) as pipeline:
        results = pipeline | stream | TrackIncidents(AlertSettings(open_after=3, close_after=2),
                                                     restore=lambda device: snapshot)
        rows = results | beam.FlatMap(lambda r: [(i.incident_id, i.status, i.n_events) for i in r.incidents])
        assert_that(rows, equal_to([("pump-1:0.000", "open", 3), ("pump-1:0.000", "closed", 4)]))


def test_an_incident_names_its_top_three_sensors_by_mean_share_over_its_anomalous_rows_pending_ones_included():
    incidents, state = explained()
    assert [(i.status, i.start_time, i.n_events, i.top_sensors) for i in incidents] == [
        ("open", 2.0, 3, OPENED), ("closed", 2.0, 4, CLOSED)]
    assert state.share_sums == {"a": 0.0, "b": 0.0, "c": 0.0, "d": 1.0} and state.share_rows == 1  # the next run


def test_the_explanation_continues_across_batches_and_a_restart_of_the_state():
    whole, state = explained()
    for cut in range(1, len(SCORES)):
        for round_trip in (False, True):
            split, after = explained(cut, round_trip)
            assert split == whole and after.share_rows == state.share_rows, (cut, round_trip)
            assert after.share_sums == pytest.approx(state.share_sums)


def test_the_state_of_an_earlier_release_restores_with_nothing_accumulated():
    earlier = DebounceState()
    list(debounce(earlier, batch([0.9] * 3), 3, 2))
    data = json.loads(json.dumps(earlier.to_json()))
    del data["share_sums"], data["share_rows"], data["open"]["top_sensors"]
    restored = DebounceState.from_json(data)
    assert restored == earlier and restored.share_rows == 0 and restored.open.top_sensors is None


def test_a_model_without_contributions_explains_nothing_and_a_silent_device_names_no_sensor():
    incidents = list(debounce(DebounceState(), batch([0.9] * 3 + [0.1] * 2), 3, 2))
    assert [(i.status, i.top_sensors) for i in incidents] == [("open", None), ("closed", None)]
    silent = batch([0.1])
    silent.notice = DeviceNotice(DeviceNotice.SILENT, 0.0)
    [incident] = track_silence(DebounceState(last_event_time=5.0), silent)
    assert incident.kind == "device_silent" and incident.top_sensors is None


def test_a_missing_sensor_incident_names_its_sensor():
    incidents = list(track_missing(DebounceState(), batch([0.1] * 4, imputed=[["flow"]] * 3 + [None]), after=2))
    assert [(i.status, i.top_sensors) for i in incidents] == [("open", [{"sensor": "flow", "share": 1.0}]),
                                                              ("closed", [{"sensor": "flow", "share": 1.0}])]


def test_a_restored_device_continues_its_incidents_explanation():
    earlier = DebounceState()
    opened = list(debounce(earlier, batch(SCORES[:5], contributions=SHARES[:5]), 3, 2))
    stored = DeviceSnapshot("pump-1", WindowState(np.zeros((0, 2))), earlier.to_json(), opened, 0.0)
    snapshot = DeviceSnapshot.from_json("pump-1", stored.to_json(), 0.0)
    rest = batch(SCORES[5:], start=5, contributions=SHARES[5:])
    stream = EventStream().add_elements([("pump-1", rest)]).advance_watermark_to_infinity()
    with beam.Pipeline(options=PipelineOptions([], runner="BundleBasedDirectRunner", streaming=True)) as pipeline:
        results = pipeline | stream | TrackIncidents(AlertSettings(open_after=3, close_after=2),
                                                     restore=lambda device: snapshot)
        rows = results | beam.FlatMap(lambda r: [(i.status, i.n_events, json.dumps(i.top_sensors))
                                                 for i in r.incidents])
        assert_that(rows, equal_to([("open", 3, json.dumps(OPENED)), ("closed", 4, json.dumps(CLOSED))]))
