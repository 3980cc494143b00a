"""The live log line: throughput, dead letters, duplicates and latency percentiles per interval."""
import time

import numpy as np

from features.schema import DeadLetter
from inference_pipeline.results import PredictionBatch
from inference_pipeline.steps.dedup import Duplicate
from inference_pipeline.steps.metrics import Tally


def test_an_interval_is_reported_once_it_has_lasted_and_then_starts_over():
    tally = Tally(every_s=0.2)
    now = time.time()
    batch = PredictionBatch("d", np.asarray(["a", "b"], dtype=object), np.array([now - 0.3, now - 0.1]),
                            np.array([now - 0.25, now - 0.05]), now, np.zeros(2), np.zeros(2), 0.5,
                            np.array([30, 30]), 30, "m", "1")
    assert tally.add(batch) is None
    assert tally.add(DeadLetter("bad_json", "invalid JSON", "{", now)) is None
    time.sleep(0.25)
    line = tally.add(Duplicate("d", "a", now - 0.3, now))
    assert "2 dead letters" not in line and "1 dead letters" in line and "1 duplicates" in line
    assert "event->prediction 200/" in line and "arrival->prediction 150/" in line
    assert tally.add(Duplicate("d", "b", now, now)) is None


def test_an_interval_of_roster_notices_only_reports_without_latencies():
    tally = Tally(every_s=0.05)
    empty = PredictionBatch("d", np.asarray([], dtype=object), np.array([]), np.array([]), time.time(), np.zeros(0),
                            np.zeros(0), 0.5, np.array([], dtype=int), 30, "m", "1")
    assert tally.add(empty) is None
    time.sleep(0.1)
    line = tally.add(empty)
    assert line.startswith("0 predictions/s") and "latency" not in line
