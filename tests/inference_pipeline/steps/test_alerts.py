import json

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream as EventStream
from apache_beam.testing.util import assert_that, equal_to

from features.window import WindowState
from inference_pipeline.results import DeviceSnapshot, Incident, PredictionBatch
from inference_pipeline.steps.alerts import AlertSettings, DebounceState, TrackIncidents, debounce, track_missing


def batch(scores, start=0.0, device="pump-1", fill=30, imputed=None):
    scores = np.asarray(scores, dtype=float)
    times = start + np.arange(len(scores), dtype=float)
    return PredictionBatch(device, times.astype(str), times, times, 0.0, scores, scores, 0.5,
                           np.full(len(scores), fill), 30, "m", "1", imputed=imputed,
                           state=WindowState(np.zeros((0, 2)), float(times[-1])))


def test_an_incident_opens_after_consecutive_anomalies_and_closes_after_normal_rows():
    state = DebounceState()
    incidents = list(debounce(state, batch([0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.95, 0.2, 0.2, 0.2, 0.9]), 3, 3))
    assert [(i.status, i.start_time, i.end_time) for i in incidents] == [("open", 3.0, None), ("closed", 3.0, 6.0)]
    assert incidents[1].peak_score == 0.95 and incidents[1].n_events == 4
    assert state.open is None and state.anomalous_run == 1


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
