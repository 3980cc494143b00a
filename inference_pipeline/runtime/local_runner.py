"""Fixes to Beam 2.77's local FnApiRunner: two that a long-running live stream needs, one that lets several workers
share a sharded replay (Dataflow needs none of them)."""
from __future__ import annotations

import os
from collections.abc import Iterable

from apache_beam.metrics import monitoring_infos
from apache_beam.portability.api import metrics_pb2
from apache_beam.runners.portability.fn_api_runner import execution, fn_runner, worker_handlers

_ORIGINAL_EXECUTE = fn_runner.FnApiRunner._execute_bundle
_ORIGINAL_BUNDLE_MANAGER = fn_runner.FnApiRunner._get_bundle_manager


def consolidate_eagerly(infos: Iterable[metrics_pb2.MonitoringInfo]) -> list[metrics_pb2.MonitoringInfo]:
    """Beam's metric consolidation, materialized (Beam's is a generator)."""
    return list(monitoring_infos.consolidate(infos))


# Library thread pools in each worker process: one thread each, so workers do not spin on each other's cores.
ONE_THREAD_EACH = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def prepare_local_runner(workers: int = 1) -> None:
    """Patch the in-process FnApiRunner for streams of many bundles (a live stream commits one every ~30 ms).

    - Metrics: the runner folds each bundle's metrics into its stage's running total with a lazy generator
      chained onto the previous total, so every bundle's metrics stay in memory and reading the totals (the
      stream's final counts) recursed once per bundle: past ~1,000 bundles it raised RecursionError. Folding
      eagerly keeps one consolidated list per stage.
    - User state: the runner hands every bundle a fresh cache token, so its state cache never hits across
      bundles, yet each entry put is weighed with objsize, which walks the globals of every loaded module (about
      13 ms with TensorFlow and torch loaded): per device, per stateful step, per bundle, it capped the live
      stream near 1,000 events/s. Without the cache, state is read from the runner's in-memory store: same results.
    - Workers: with ``direct_num_workers`` > 1 the runner still runs a stage holding user state on one worker
      ("a single key cannot be processed concurrently ... we could arrange to partition work by key"). A stage whose
      every input is grouped by key (``steps.shard.ShardByDevice``), without timers, runs on all workers instead:
      the runner's grouped buffers give each worker whole keys, so no key is ever on two workers. Worker processes
      start with one thread per library pool (torch's OpenMP and TensorFlow's pools, ``ONE_THREAD_EACH``, unless
      set already): with two of each per worker, their spinning threads took a third of every worker's core.
    """
    if workers > 1:
        for name, value in ONE_THREAD_EACH.items():
            os.environ.setdefault(name, value)
    fn_runner.consolidate_monitoring_infos = consolidate_eagerly
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    fn_runner.FnApiRunner._execute_bundle = _execute_bundle
    fn_runner.FnApiRunner._get_bundle_manager = _get_bundle_manager


def _keyed_input(bundle_context_manager: execution.BundleContextManager, bundle_input: fn_runner.DataInput) -> bool:
    """A stateful stage for several workers whose data all comes grouped by key, with no timers."""
    return (bundle_context_manager.num_workers > 1 and bundle_context_manager.stage.is_stateful()
            and bool(bundle_input.data) and not bundle_input.timers
            and all(isinstance(buffer, execution.GroupingBuffer) for buffer in bundle_input.data.values()))


def _execute_bundle(self, runner_execution_context, bundle_context_manager, bundle_input):
    self._iotml_keyed_input = _keyed_input(bundle_context_manager, bundle_input)
    try:
        return _ORIGINAL_EXECUTE(self, runner_execution_context, bundle_context_manager, bundle_input)
    finally:
        self._iotml_keyed_input = False


def _get_bundle_manager(self, bundle_context_manager):
    if getattr(self, "_iotml_keyed_input", False):
        return fn_runner.ParallelBundleManager(
            bundle_context_manager, self._progress_frequency,
            cache_token_generator=fn_runner.FnApiRunner.get_cache_token_generator(static=False))
    return _ORIGINAL_BUNDLE_MANAGER(self, bundle_context_manager)
