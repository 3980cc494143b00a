"""Two fixes to Beam 2.77's local FnApiRunner that a long-running live stream needs (Dataflow needs neither)."""
from __future__ import annotations

from collections.abc import Iterable

from apache_beam.metrics import monitoring_infos
from apache_beam.portability.api import metrics_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers


def consolidate_eagerly(infos: Iterable[metrics_pb2.MonitoringInfo]) -> list[metrics_pb2.MonitoringInfo]:
    """Beam's metric consolidation, materialized (Beam's is a generator)."""
    return list(monitoring_infos.consolidate(infos))


def prepare_local_runner() -> None:
    """Patch the in-process FnApiRunner for streams of many bundles (a live stream commits one every ~30 ms).

    - Metrics: the runner folds each bundle's metrics into its stage's running total with a lazy generator
      chained onto the previous total, so every bundle's metrics stay in memory and reading the totals (the
      stream's final counts) recursed once per bundle: past ~1,000 bundles it raised RecursionError. Folding
      eagerly keeps one consolidated list per stage.
    - User state: the runner hands every bundle a fresh cache token, so its state cache never hits across
      bundles, yet each entry put is weighed with objsize, which walks the globals of every loaded module (about
      13 ms with TensorFlow and torch loaded): per device, per stateful step, per bundle, it capped the live
      stream near 1,000 events/s. Without the cache, state is read from the runner's in-memory store: same results.
    """
    fn_runner.consolidate_monitoring_infos = consolidate_eagerly
    worker_handlers.STATE_CACHE_SIZE_MB = 0
