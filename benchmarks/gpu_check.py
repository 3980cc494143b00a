"""GPU path check: train the autoencoder on CUDA, save its weights, load them on CUDA and CPU, compare and time;
then RunInference with each local handler kind against a raw torch forward of the same network.

Runs where CUDA is present; without it, it prints ``{"skipped": ...}`` and exits with status 1 (nothing is trained),
unless ``--device cpu`` asks for the same measurements on the CPU (to check the script itself). Needs torch, numpy,
safetensors, pydantic, tqdm and Beam (its wheel and small dependencies fit what a bare GPU box can be sent; no
TensorFlow or MLflow): the model version is assembled in memory over the saved weights (``save_network`` ->
``ModelVersion`` -> ``LoadedModel``, the handler's load path, which verifies the version's manifest) rather than
written with ``write_model_version``, which needs fitted MLTransform artifacts (TensorFlow) and writes an MLflow
model; the rows are synthetic, already-scaled features, so no MLTransform runs.

Handlers: for each local handler kind that runs on a GPU (``model_handlers.kinds.HANDLERS`` whose settings have a
``device``; today ``torch``) and each batch size in
``--batch-rows``, against the raw forward a user would write for the same rows (numpy -> device -> network -> host,
in batches of the same size): the handler's ``load_model`` and ``run_inference`` called directly (``direct``), and
the pipeline's own ``RunInference`` over keyed ``FeatureBatch`` elements emitted in the same bundle (the rows are
memory-mapped, never pickled into the pipeline), on the local runner, timed from its first to its last output batch
(steady state: set-up and model load excluded), once with live-sized elements of 128 rows (RunInference gathers
them into passes of the batch size) and once with one element per pass. Each ``*_vs_raw`` is the ratio of rows per
second to the raw forward's (goal: at least 0.8). Last output line is JSON.

    python benchmarks/gpu_check.py [--rows 200000] [--batch-rows 1024 4096 16384] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import torch
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from features.schema import EventBatch, FeatureBatch
from features.spec import FeatureSpec
from model_handlers.contract import ModelOutput
from model_handlers.kinds import HANDLERS, keyed_handler
from model_handlers.manifest import write_manifest
from model_handlers.model_version import ModelVersion
from model_handlers.torch_model import LoadedModel, load_network, resolve_device, save_network
from training.train import fit_autoencoder

LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
# the local kinds that place a model on a device (their settings have ``device``), the autoencoder's weights in hand
GPU_KINDS = {kind: build for kind, build in HANDLERS.items() if "device" in kind.model_fields}
LIVE_ELEMENT_ROWS = 128  # rows per device batch (element), as a live bundle's device batches are

SPEC = FeatureSpec(sensors=tuple(f"s{i}" for i in range(8)), window=30)
HIDDEN = (32, 8)


def timed_scores(model: LoadedModel, features: np.ndarray, repeats: int = 3) -> tuple[ModelOutput, float]:
    model.score(features[:1024])
    started = time.perf_counter()
    for _ in range(repeats):
        output = model.score(features)
    return output, (time.perf_counter() - started) / repeats


def model_version(path: Path, network: torch.nn.Module, threshold: float) -> ModelVersion:
    """The trained network as a model version: weights saved as safetensors, metadata as model.json would hold."""
    save_network(network, path)
    meta = {"architecture": {"kind": "autoencoder", "input_dim": len(SPEC.feature_names), "hidden": list(HIDDEN)},
            "feature_spec": SPEC.model_dump(mode="json"), "threshold": threshold, "metrics": {},
            "name": "gpu-check", "transform_id": "none"}
    return ModelVersion(path, meta, write_manifest(path))


def raw_rows_per_s(version: ModelVersion, device: torch.device, features: np.ndarray, batch_rows: int) -> float:
    """A plain forward over ``features`` in batches of ``batch_rows``: numpy -> device -> network -> host."""
    network = load_network(version, device)

    def one_pass() -> None:
        with torch.inference_mode():
            for start in range(0, len(features), batch_rows):
                x = torch.from_numpy(features[start:start + batch_rows]).to(device)
                network(x).cpu()

    one_pass()
    started = time.perf_counter()
    one_pass()
    return len(features) / (time.perf_counter() - started)


class _Stamp(beam.DoFn):
    """Each output batch's wall clock (ms) and rows, into distributions: first to last batch is the steady state."""

    def __init__(self):
        self._ms = Metrics.distribution("gpu_check", "ms")
        self._rows = Metrics.distribution("gpu_check", "rows")

    def process(self, element) -> None:
        self._ms.update(int(time.time() * 1000))
        self._rows.update(len(element[1].example))


class _FeatureBatches(beam.DoFn):
    """The saved rows as keyed FeatureBatches of ``element_rows`` rows, memory-mapped in ``setup`` and emitted in the
    same bundle as RunInference runs: the rows never travel inside the pipeline (a side argument would be pickled into
    every bundle processor the runner builds, and decoding elements would be timed as if it were inference)."""

    def __init__(self, rows_path: str, element_rows: int):
        self._rows_path = rows_path
        self._element_rows = element_rows
        self._rows = None

    def setup(self) -> None:
        self._rows = np.load(self._rows_path, mmap_mode="r")

    def process(self, unused_impulse: bytes):
        size = self._element_rows
        for start in range(0, len(self._rows) - size + 1, size):
            batch = _feature_batch(np.ascontiguousarray(self._rows[start:start + size]), f"d{start // size % 50}")
            yield batch.events.device_id, batch


def _feature_batch(rows: np.ndarray, device_id: str = "d0") -> FeatureBatch:
    """Already-scaled rows as one device's FeatureBatch (the events' own fields are placeholders)."""
    n = len(rows)
    events = EventBatch(device_id, np.full(n, "e", dtype=object), np.zeros(n), np.zeros((n, 8)), np.zeros(n))
    return FeatureBatch(events, rows, np.full(n, 30), scaled_by="none")


def run_inference_rows_per_s(settings, version: ModelVersion, rows_path: Path, element_rows: int) -> float:
    """The pipeline's RunInference with ``settings``' handler over the saved rows as keyed FeatureBatches, steady
    state."""
    with beam.Pipeline(options=PipelineOptions([], runner=LOCAL_RUNNER)) as pipeline:
        _ = (pipeline | beam.Impulse() | beam.ParDo(_FeatureBatches(str(rows_path), element_rows))
             | RunInference(keyed_handler(settings, version)) | beam.ParDo(_Stamp()))
    found = {d.key.metric.name: d.committed
             for d in pipeline.result.metrics().query(MetricsFilter().with_namespace("gpu_check"))["distributions"]}
    stamps, counted = found["ms"], found["rows"]
    return (counted.sum - counted.min) / max((stamps.max - stamps.min) / 1000, 1e-3)


def direct_rows_per_s(handler, features: np.ndarray, batch_rows: int) -> float:
    """The handler's own ``load_model`` and ``run_inference`` called without Beam, one batch of ``batch_rows``
    rows per call: what the handler costs beyond the raw forward, apart from what RunInference adds."""
    model = handler.load_model()
    batches = [_feature_batch(features[start:start + batch_rows])
               for start in range(0, len(features), batch_rows)]
    handler.run_inference(batches[:1], model)
    started = time.perf_counter()
    for batch in batches:
        handler.run_inference([batch], model)
    return len(features) / (time.perf_counter() - started)


def handler_figures(version: ModelVersion, device: str, features: np.ndarray, batch_sizes: list[int]) -> list[dict]:
    """Per local handler kind and batch size: the raw forward, the handler called directly, and RunInference over
    live-sized device batches and over one device batch per forward pass."""
    figures = []
    torch.set_num_threads(1)  # on a CPU, the raw forward gets the one thread the handlers' cpu_threads default to
    rows_path = version.path.parent / "rows.npy"
    np.save(rows_path, features)
    for settings_type, build in GPU_KINDS.items():
        try:
            build(settings_type(uri=str(version.path)), version)
        except ValueError as refused:  # a kind serving other models (the forecaster needs lagged features)
            figures.append({"handler": settings_type.model_fields["handler"].default, "skipped": str(refused)})
            continue
        for batch_rows in batch_sizes:
            settings = settings_type(uri=str(version.path), device=device, min_batch_size=batch_rows,
                                     max_batch_size=batch_rows)
            raw = raw_rows_per_s(version, resolve_device(device), features, batch_rows)
            figure = {"handler": settings.handler, "batch_rows": batch_rows, "raw_forward_rows_per_s": round(raw)}
            measured = {"direct": direct_rows_per_s(build(settings, version), features, batch_rows)}
            for element_rows in dict.fromkeys((LIVE_ELEMENT_ROWS, batch_rows)):
                measured[f"run_inference_{element_rows}_row_elements"] = run_inference_rows_per_s(
                    settings, version, rows_path, element_rows)
            for name, rows_per_s in measured.items():
                figure[f"{name}_rows_per_s"] = round(rows_per_s)
                figure[f"{name}_vs_raw"] = round(rows_per_s / raw, 3)
            figures.append(figure)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-rows", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu",
                        help="cpu: the same measurements without CUDA (checks the script, not the GPU)")
    args = parser.parse_args()
    if args.device == "gpu" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "CUDA is not available here", "torch": torch.__version__}))
        sys.exit(1)
    device = args.device
    rng = np.random.default_rng(0)
    dim = len(SPEC.feature_names)
    mixing = rng.normal(size=(8, dim))
    normal = (rng.normal(size=(args.rows, 8)) @ mixing + 0.05 * rng.normal(size=(args.rows, dim))).astype(np.float32)
    anomalous = normal[:2000] + rng.normal(0, 3, size=(2000, dim)).astype(np.float32)
    train, holdout = normal[: int(0.8 * args.rows)], normal[int(0.8 * args.rows):]
    timings, fits = {}, {}
    for kind in dict.fromkeys((device, "cpu")):
        started = time.perf_counter()
        fits[kind] = fit_autoencoder(train, holdout, HIDDEN, 5, 1024, 1e-3, 0.999, 1.5, device=kind, progress=False)
        timings[f"train_{kind}_s"] = round(time.perf_counter() - started, 2)
    fit = fits[device]
    with tempfile.TemporaryDirectory() as tmp:
        version = model_version(Path(tmp) / "version", fit.network, fit.threshold)
        gpu = LoadedModel(version, resolve_device(device))
        cpu = LoadedModel(version, resolve_device("cpu"))
        gpu_out, gpu_s = timed_scores(gpu, normal)
        cpu_out, cpu_s = timed_scores(cpu, normal)
        detected = float((gpu.score(anomalous).raw_score >= version.threshold).mean())
        false_alarms = float((gpu_out.anomaly_score >= 0.5).mean())
        handlers = handler_figures(version, device, normal, args.batch_rows)
    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if device == "gpu" else "cpu", "torch": torch.__version__,
        "auto_device": str(resolve_device("auto")),
        "network_on": str(next(gpu.network.parameters()).device), "rows": args.rows,
        "max_abs_diff_device_cpu": float(np.max(np.abs(gpu_out.raw_score - cpu_out.raw_score))),
        "allclose": bool(np.allclose(gpu_out.raw_score, cpu_out.raw_score, rtol=1e-3, atol=1e-5)),
        "device_rows_per_s": round(args.rows / gpu_s), "cpu_rows_per_s": round(args.rows / cpu_s),
        "detected_fraction": round(detected, 3), "false_alarm_fraction": round(false_alarms, 4), **timings,
        "handlers": handlers,
    }))


if __name__ == "__main__":
    main()
