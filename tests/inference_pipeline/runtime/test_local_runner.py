"""The local runner survives a stream of many bundles: its metric totals stay readable (live streams commit a bundle
every few tens of milliseconds, thousands in a few minutes)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.unbounded_source import CheckpointMark, ReadFromUnboundedSource, UnboundedReader, UnboundedSource
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from inference_pipeline.builder import LOCAL_RUNNER
from inference_pipeline.runtime.local_runner import prepare_local_runner

BUNDLES = 1500


class _Position(CheckpointMark):
    def __init__(self, read: int):
        self.read = read

    def finalize_checkpoint(self) -> None:
        pass


class _PositionCoder(coders.Coder):
    def encode(self, value: _Position) -> bytes:
        return str(value.read).encode()

    def decode(self, encoded: bytes) -> _Position:
        return _Position(int(encoded))

    def is_deterministic(self) -> bool:
        return True


class _Counting(UnboundedSource):
    """0, 1, ... ``count - 1``: an unbounded source that ends, so the pipeline finishes."""

    def __init__(self, count: int):
        self.count = count

    def split(self, desired_num_splits, options=None):
        return [self]

    def create_reader(self, options, checkpoint_mark):
        return _Reader(self.count, checkpoint_mark.read if checkpoint_mark else 0)

    def get_checkpoint_mark_coder(self):
        return _PositionCoder()

    def default_output_coder(self):
        return coders.VarIntCoder()


class _Reader(UnboundedReader):
    def __init__(self, count: int, read: int):
        self._count, self._read = count, read

    def start(self) -> bool:
        return self.advance()

    def advance(self) -> bool:
        if self._read >= self._count:
            return False
        self._read += 1
        return True

    def get_current(self) -> int:
        return self._read - 1

    def get_current_timestamp(self) -> Timestamp:
        return Timestamp.of(self._read)

    def get_watermark(self) -> Timestamp:
        return MAX_TIMESTAMP if self._read >= self._count else Timestamp.of(self._read)

    def get_checkpoint_mark(self) -> _Position:
        return _Position(self._read)

    def close(self) -> None:
        pass


class _Count(beam.DoFn):
    def __init__(self):
        self._seen = Metrics.counter("test", "seen")

    def process(self, element: int):
        self._seen.inc()
        yield element


def test_metric_totals_stay_readable_after_thousands_of_bundles():
    prepare_local_runner()
    options = beam.options.pipeline_options.PipelineOptions(runner=LOCAL_RUNNER, streaming=True)
    pipeline = beam.Pipeline(options=options)
    _ = (pipeline | ReadFromUnboundedSource(_Counting(BUNDLES), max_records_per_bundle=1)
         | beam.ParDo(_Count()))
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("test"))["counters"]
    assert [counter.committed for counter in counters] == [BUNDLES]
