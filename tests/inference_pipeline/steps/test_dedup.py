"""Redelivered events are dropped by event id, per device, with bounded memory; never a second prediction."""
import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from features.schema import EventBatch
from inference_pipeline.builder import LOCAL_RUNNER
from inference_pipeline.steps.dedup import DropDuplicates, SeenIds, drop_seen, id_hashes


def batch(device: str, ids: list[str], ts: list[float]) -> EventBatch:
    n = len(ids)
    return EventBatch(device, np.asarray(ids, dtype=object), np.asarray(ts, dtype=np.float64),
                      np.arange(n * 2, dtype=np.float64).reshape(n, 2), np.full(n, 5.0))


def test_copies_within_and_across_batches_are_dropped_and_reported():
    seen = SeenIds()
    first, dups = drop_seen(seen, batch("d", ["a", "b", "a"], [1.0, 2.0, 1.0]), horizon_s=60, max_ids=100)
    assert first.event_ids.tolist() == ["a", "b"] and first.values.shape == (2, 2)
    assert [(d.event_id, d.event_time) for d in dups] == [("a", 1.0)]
    second, dups = drop_seen(seen, batch("d", ["b", "c"], [2.0, 3.0]), horizon_s=60, max_ids=100)
    assert second.event_ids.tolist() == ["c"] and second.ts.tolist() == [3.0]
    assert [d.event_id for d in dups] == ["b"]


def test_memory_is_bounded_by_count_and_event_time_horizon():
    seen = SeenIds()
    for start in range(0, 10_000, 100):
        ids = [str(i) for i in range(start, start + 100)]
        drop_seen(seen, batch("d", ids, [float(i) for i in range(start, start + 100)]), horizon_s=1e9, max_ids=500)
        assert len(seen.hashes) <= 625
    assert set(id_hashes(["9999"])) <= set(seen.hashes) and not set(id_hashes(["0"])) & set(seen.hashes)
    drop_seen(seen, batch("d", ["late"], [1e6]), horizon_s=60, max_ids=500)
    assert seen.hashes.tolist() == id_hashes(["late"]).tolist()


def test_an_id_older_than_what_is_kept_passes_again():
    seen = SeenIds()
    drop_seen(seen, batch("d", ["old"], [0.0]), horizon_s=10, max_ids=100)
    drop_seen(seen, batch("d", ["new"], [100.0]), horizon_s=10, max_ids=100)
    again, dups = drop_seen(seen, batch("d", ["old"], [0.0]), horizon_s=10, max_ids=100)
    assert again.event_ids.tolist() == ["old"] and not dups


def test_pipeline_counts_duplicates_and_restores_what_the_sink_already_predicted():
    class AlreadyPredicted:
        def seen_ids(self, device_id: str, since: float) -> list[tuple[str, float]]:
            return [("p1", 10.0)] if device_id == "d1" else []

    batches = [("d1", batch("d1", ["p1", "e1", "e2"], [10.0, 11.0, 12.0])),
               ("d1", batch("d1", ["e2", "e3"], [12.0, 13.0])),
               ("d2", batch("d2", ["p1"], [10.0]))]
    pipeline = beam.Pipeline(options=PipelineOptions(runner=LOCAL_RUNNER))
    unique = (pipeline | beam.Create(batches)
              | DropDuplicates(horizon_s=60, max_ids=100, restore=AlreadyPredicted()))
    kept = unique.events | beam.FlatMap(lambda kv: kv[1].event_ids.tolist())
    assert_that(kept, equal_to(["e1", "e2", "e3", "p1"]), label="FirstSightings")
    assert_that(unique.duplicates | beam.Map(lambda d: (d.device_id, d.event_id)),
                equal_to([("d1", "p1"), ("d1", "e2")]), label="Duplicates")
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("duplicates"))["counters"]
    assert sum(c.committed for c in counters) == 2
