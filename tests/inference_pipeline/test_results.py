"""One results schema: every sink's rows and messages come from it, JSON columns serialised, optional model
outputs null when a model does not give them."""
import json

import numpy as np

from features.schema import DeadLetter, DeadLetterReason
from inference_pipeline.results import ALERTS, DEAD_LETTERS, PREDICTIONS, Incident, PredictionBatch


def prediction(**optional) -> PredictionBatch:
    return PredictionBatch("pump-001", np.asarray(["a", "b"], dtype=object), np.array([1.0, 2.0]),
                           np.array([1.1, 2.1]), 3.0, np.array([0.1, 0.9]), np.array([0.2, 0.95]), 0.5,
                           np.array([30, 30]), 30, "iot-anomaly", "4", **optional)


def test_alert_message_has_every_alert_column_with_its_top_sensors_as_json():
    why = [{"sensor": "rpm", "share": 0.62}, {"sensor": "pressure", "share": 0.21}, {"sensor": "flow", "share": 0.09}]
    incident = Incident("pump-001:10.000", "pump-001", 10.0, None, 0.97, 3, "open", "iot-anomaly", "4",
                        top_sensors=why)
    [message] = ALERTS.messages(incident)
    assert json.loads(message) == {"incident_id": "pump-001:10.000", "device_id": "pump-001", "start_time": 10.0,
                                   "end_time": None, "peak_score": 0.97, "n_events": 3, "status": "open",
                                   "model_name": "iot-anomaly", "model_version": "4", "kind": "anomaly",
                                   "sensor": None, "top_sensors": why}
    [row] = ALERTS.rows(incident)
    assert json.loads(row[ALERTS.column_names.index("top_sensors")]) == why
    [silent] = ALERTS.messages(Incident("i", "d", 1.0, None, 0.0, 0, "open", "m", "1", "device_silent"))
    assert json.loads(silent)["top_sensors"] is None


def test_dead_letter_message_keeps_reason_detail_and_payload():
    letter = DeadLetter(DeadLetterReason.OVERSIZE, "payload of 70000 bytes exceeds 65536", '{"x": 1', 12.5, None)
    assert json.loads(DEAD_LETTERS.messages(letter)[0]) == {
        "reason": "oversize", "detail": "payload of 70000 bytes exceeds 65536", "payload": '{"x": 1',
        "received_at": 12.5, "device_id": None}


def test_one_prediction_message_per_event_with_every_column():
    messages = [json.loads(m) for m in PREDICTIONS.messages(("pump-001", prediction()))]
    assert [m["event_id"] for m in messages] == ["a", "b"] and list(messages[0]) == list(PREDICTIONS.column_names)
    assert [m["is_anomaly"] for m in messages] == [0, 1]
    assert messages[1]["label"] is None and messages[1]["sensor_contributions"] is None


def test_a_prediction_message_nests_its_json_columns():
    batch = prediction(sensor_contributions=[None, {"rpm": 0.75, "flow": 0.25}], imputed=[["flow"], None])
    first, second = (json.loads(m) for m in PREDICTIONS.messages(batch))
    assert second["sensor_contributions"] == {"rpm": 0.75, "flow": 0.25} and first["imputed"] == ["flow"]


def test_contributions_of_selected_rows_as_a_matrix():
    batch = prediction(sensor_contributions=[{"rpm": 0.75, "flow": 0.25}, {"flow": 0.5, "rpm": 0.5}])
    names, rows, matrix = batch.contribution_matrix()
    assert names == ("rpm", "flow") and rows.tolist() == [0, 1] and matrix.tolist() == [[0.75, 0.25], [0.5, 0.5]]
    names, rows, matrix = batch.contribution_matrix(np.array([False, True]))
    assert rows.tolist() == [1] and matrix.tolist() == [[0.5, 0.5]]
    assert batch.contribution_matrix(np.array([False, False])) is None
    assert prediction().contribution_matrix() is None
    assert prediction(sensor_contributions=[None, None]).contribution_matrix() is None
    assert prediction(sensor_contributions=[None, {"rpm": 1.0}]).contribution_matrix()[2].shape == (1, 1)


def test_optional_model_outputs_are_serialised_per_row():
    batch = prediction(label=["ok", "wear"], class_probabilities=[{"ok": 0.9, "wear": 0.1}, {"ok": 0.2, "wear": 0.8}],
                       sensor_contributions=[None, {"rpm": 1.0}])
    first, second = PREDICTIONS.rows(batch)
    names = PREDICTIONS.column_names
    assert second[names.index("label")] == "wear"
    assert json.loads(second[names.index("class_probabilities")]) == {"ok": 0.2, "wear": 0.8}
    assert first[names.index("sensor_contributions")] is None
    assert json.loads(second[names.index("sensor_contributions")]) == {"rpm": 1.0}


def test_every_record_field_is_a_schema_column_and_back():
    for table, value in ((PREDICTIONS, prediction()), (DEAD_LETTERS, DeadLetter("bad_json", "x", "{", 1.0)),
                         (ALERTS, Incident("i", "d", 1.0, None, 0.5, 1, "open", "m", "1"))):
        assert set(table.to_records(value)) == set(table.column_names)
