"""Topic sinks publish self-describing JSON: alerts, dead letters with reasons, predictions."""
import json

import numpy as np

from features.schema import DeadLetter, DeadLetterReason
from inference_pipeline.steps.alerts import ALERT_COLUMNS, Incident
from inference_pipeline.steps.score import PREDICTION_COLUMNS, PredictionBatch
from inference_pipeline.connectors.topics import alert_messages, dead_letter_messages, prediction_messages


def test_alert_message_has_every_alert_column():
    incident = Incident("pump-001:10.000", "pump-001", 10.0, None, 0.97, 3, "open", "iot-anomaly", "4")
    [message] = alert_messages(incident)
    assert json.loads(message) == dict(zip(ALERT_COLUMNS, incident.row()))


def test_dead_letter_message_keeps_reason_detail_and_payload():
    letter = DeadLetter(DeadLetterReason.OVERSIZE, "payload of 70000 bytes exceeds 65536", '{"x": 1', 12.5, None)
    assert json.loads(dead_letter_messages(letter)[0]) == {
        "reason": "oversize", "detail": "payload of 70000 bytes exceeds 65536", "payload": '{"x": 1',
        "received_at": 12.5, "device_id": None}


def test_one_prediction_message_per_event():
    batch = PredictionBatch("pump-001", np.asarray(["a", "b"], dtype=object), np.array([1.0, 2.0]),
                            np.array([1.1, 2.1]), 3.0, np.array([0.1, 0.9]), np.array([0.2, 0.95]), 0.5,
                            np.array([30, 30]), 30, "iot-anomaly", "4")
    messages = [json.loads(m) for m in prediction_messages(("pump-001", batch))]
    assert [m["event_id"] for m in messages] == ["a", "b"] and set(messages[0]) == set(PREDICTION_COLUMNS)
    assert [m["is_anomaly"] for m in messages] == [0, 1]
