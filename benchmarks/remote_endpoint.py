"""The remote hops' cost: one RunInference batch scored in process (``torch``), through ``mlflow models serve`` of
the same version on this machine (``http_endpoint``, one uvicorn worker, keep-alive), and through the Vertex AI
client (``vertex_endpoint``) against the local Vertex stand-in (``tests/vertex_stand_in.py``, in this process), which
forwards the instances to the same model server as Vertex forwards them to a serving container: that path's figure is
the client's and the stand-in's overhead on top of the model server, not Vertex AI's network.

Per path and batch size: the median and 99th percentile of the call's wall time, the latency the hop adds (median
remote - median local) and rows per second. Last output line is JSON:
``{"rows": {"1": {"local_ms_p50": ..., "http_endpoint_ms_p50": ..., "http_endpoint_added_ms_p50": ..., ...}}}``.

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
from model_handlers.vertex import VertexProject  # noqa: E402
from model_handlers.vertex_endpoint import VertexEndpointSettings, vertex_endpoint_handler  # noqa: E402
from replay_throughput import train_version  # noqa: E402
from tests.model_servers import ModelServer  # noqa: E402
from tests.vertex_stand_in import vertex_stand_in  # noqa: E402
from training.settings import VertexServing  # noqa: E402
from training.vertex_register import deploy_version, upload_version  # noqa: E402


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


def vertex_deployment(stand_in, version, server: ModelServer, max_rows: int) -> VertexEndpointSettings:
    """The version uploaded and deployed on the stand-in, its predictions answered by ``server``."""
    import requests

    project = VertexProject(project=stand_in.project, location=stand_in.location, api_endpoint=stand_in.url,
                            credentials="anonymous", staging_bucket="gs://bench")
    registered = version.with_identity(version.name, "1")  # train_version registers it first in a fresh registry
    uploaded = upload_version(registered, project, VertexServing(image_uri="local/iot-anomaly:bench"))
    deployment = deploy_version(uploaded, project, endpoint_display_name="bench")
    session = requests.Session()
    stand_in.register_predictor(uploaded.model_id, lambda instances, parameters: session.post(
        server.url, json={"instances": instances}, timeout=60).json()["predictions"])
    return VertexEndpointSettings(uri=str(version.path), endpoint_id=deployment.endpoint_id, vertex=project,
                                  max_batch_size=max_rows)


def _ms(value: float) -> float:
    return round(float(value), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 128, 1024, 2048])
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        version = train_version(work / "train")
        with ModelServer(str(version.path), None, work / "serve.log") as server, \
                vertex_stand_in(staging_bucket="gs://bench") as stand_in:
            handlers = {"local": TorchAnomalyHandler(version, device="cpu"),
                        "http_endpoint": HttpEndpointHandler(HttpEndpointSettings(
                            uri=str(version.path), url=server.url, max_batch_size=max(args.rows)), version),
                        "vertex_endpoint": vertex_endpoint_handler(
                            vertex_deployment(stand_in, version, server, max(args.rows)), version)}
            models = {path: handler.load_model() for path, handler in handlers.items()}
            for rows in args.rows:
                batches = [batch(version, rows, seed) for seed in range(args.calls)]
                times = {path: timed(handler, models[path], batches) for path, handler in handlers.items()}
                figure = figures[str(rows)] = {"local_ms_p50": _ms(np.median(times["local"]))}
                for path in ("http_endpoint", "vertex_endpoint"):
                    figure.update({f"{path}_ms_p50": _ms(np.median(times[path])),
                                   f"{path}_ms_p99": _ms(np.percentile(times[path], 99)),
                                   f"{path}_added_ms_p50": _ms(np.median(times[path]) - np.median(times["local"])),
                                   f"{path}_rows_per_s": round(rows * 1000 / float(np.median(times[path])), 1)})
                print(f"{rows:5d} rows: local p50 {figure['local_ms_p50']:.2f} ms; " + "; ".join(
                    f"{path} p50 {figure[f'{path}_ms_p50']:.2f} ms (p99 {figure[f'{path}_ms_p99']:.2f}), "
                    f"{figure[f'{path}_rows_per_s']:.0f} rows/s" for path in ("http_endpoint", "vertex_endpoint")),
                    flush=True)
    print(json.dumps({"calls": args.calls, "rows": figures}))


if __name__ == "__main__":
    main()
