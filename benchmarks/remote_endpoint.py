"""The remote hop's cost: one RunInference batch scored in process (``torch``) and through ``mlflow models serve`` of
the same version on this machine (``http_endpoint``, one uvicorn worker, keep-alive), per batch size.

Per batch size: the median and 99th percentile of the call's wall time on each path, the latency the hop adds
(median remote - median local) and the remote path's rows per second. Last output line is JSON:
``{"rows": {"1": {"local_ms_p50": ..., "remote_ms_p50": ..., "added_ms_p50": ..., ...}, ...}}``.

    python benchmarks/remote_endpoint.py [--calls 200] [--rows 1 16 128 1024 2048]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.schema import EventBatch, FeatureBatch  # noqa: E402
from model_handlers.http_endpoint import HttpEndpointHandler, HttpEndpointSettings  # noqa: E402
from model_handlers.torch_handler import TorchAnomalyHandler  # noqa: E402
from replay_throughput import train_version  # noqa: E402
from tests.model_servers import ModelServer  # noqa: E402


def batch(version, rows: int, seed: int) -> list[FeatureBatch]:
    dim = len(version.feature_spec.feature_names)
    events = EventBatch("d", np.arange(rows).astype(str).astype(object), np.arange(rows, dtype=float),
                        np.zeros((rows, 1)), np.zeros(rows))
    features = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return [FeatureBatch(events, features, np.full(rows, 30), scaled_by=version.transform_id)]


def timed(handler, model, batches: list[list[FeatureBatch]]) -> np.ndarray:
    for item in batches[:5]:
        handler.run_inference(item, model)
    seconds = []
    for item in batches:
        started = time.perf_counter()
        handler.run_inference(item, model)
        seconds.append(time.perf_counter() - started)
    return np.array(seconds) * 1000


def _ms(value: float) -> float:
    return round(float(value), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 128, 1024, 2048])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        version = train_version(work / "train")
        with ModelServer(str(version.path), None, work / "serve.log") as server:
            local = TorchAnomalyHandler(version, device="cpu")
            remote = HttpEndpointHandler(HttpEndpointSettings(uri=str(version.path), url=server.url,
                                                              max_batch_size=max(args.rows)), version)
            local_model, client = local.load_model(), remote.load_model()
            for rows in args.rows:
                batches = [batch(version, rows, seed) for seed in range(args.calls)]
                near, far = timed(local, local_model, batches), timed(remote, client, batches)
                figures[str(rows)] = figure = {
                    "local_ms_p50": _ms(np.median(near)), "local_ms_p99": _ms(np.percentile(near, 99)),
                    "remote_ms_p50": _ms(np.median(far)), "remote_ms_p99": _ms(np.percentile(far, 99)),
                    "added_ms_p50": _ms(np.median(far) - np.median(near)),
                    "remote_rows_per_s": round(rows * 1000 / float(np.median(far)), 1)}
                print(f"{rows:5d} rows: local p50 {figure['local_ms_p50']:.2f} ms, remote p50 "
                      f"{figure['remote_ms_p50']:.2f} ms (p99 {figure['remote_ms_p99']:.2f}), added "
                      f"{figure['added_ms_p50']:.2f} ms, remote {figure['remote_rows_per_s']:.0f} rows/s", flush=True)
    print(json.dumps({"calls": args.calls, "rows": figures}))


if __name__ == "__main__":
    main()
