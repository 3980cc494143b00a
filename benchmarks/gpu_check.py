"""GPU path check: train the autoencoder on CUDA, save its weights, load them on CUDA and CPU, compare and time.

Runs where CUDA is present; without it, it prints ``{"skipped": ...}`` and exits with status 1 (nothing is trained).
Needs torch, numpy, safetensors, pydantic and tqdm only (no Beam, TensorFlow or MLflow), so it runs on a bare GPU
box: the model version is assembled in memory over the saved weights (``save_network`` -> ``ModelVersion`` ->
``LoadedModel``, the handler's load path, which verifies the version's manifest) rather than written with ``write_model_version``, which needs fitted
MLTransform artifacts (TensorFlow) and writes an MLflow model; the rows are synthetic, already-scaled features.
Scores go through ``LoadedModel.score`` (the model output contract the pipeline's handler returns). Last output line
is JSON.

    python benchmarks/gpu_check.py [--rows 200000]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from features.spec import FeatureSpec
from model_handlers.contract import ModelOutput
from model_handlers.manifest import write_manifest
from model_handlers.model_version import ModelVersion
from model_handlers.torch_model import LoadedModel, resolve_device, save_network
from training.train import fit_autoencoder

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "CUDA is not available here", "torch": torch.__version__}))
        sys.exit(1)
    rng = np.random.default_rng(0)
    dim = len(SPEC.feature_names)
    mixing = rng.normal(size=(8, dim))
    normal = (rng.normal(size=(args.rows, 8)) @ mixing + 0.05 * rng.normal(size=(args.rows, dim))).astype(np.float32)
    anomalous = normal[:2000] + rng.normal(0, 3, size=(2000, dim)).astype(np.float32)
    train, holdout = normal[: int(0.8 * args.rows)], normal[int(0.8 * args.rows):]
    timings, fits = {}, {}
    for device in ("gpu", "cpu"):
        started = time.perf_counter()
        fits[device] = fit_autoencoder(train, holdout, HIDDEN, 5, 1024, 1e-3, 0.999, 1.5, device=device,
                                       progress=False)
        timings[f"train_{device}_s"] = round(time.perf_counter() - started, 2)
    fit = fits["gpu"]
    with tempfile.TemporaryDirectory() as tmp:
        version = model_version(Path(tmp) / "version", fit.network, fit.threshold)
        gpu = LoadedModel(version, resolve_device("gpu"))
        cpu = LoadedModel(version, resolve_device("cpu"))
        gpu_out, gpu_s = timed_scores(gpu, normal)
        cpu_out, cpu_s = timed_scores(cpu, normal)
        detected = float((gpu.score(anomalous).raw_score >= version.threshold).mean())
        false_alarms = float((gpu_out.anomaly_score >= 0.5).mean())
    print(json.dumps({
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "auto_device": str(resolve_device("auto")),
        "network_on": str(next(gpu.network.parameters()).device), "rows": args.rows,
        "max_abs_diff_gpu_cpu": float(np.max(np.abs(gpu_out.raw_score - cpu_out.raw_score))),
        "allclose": bool(np.allclose(gpu_out.raw_score, cpu_out.raw_score, rtol=1e-3, atol=1e-5)),
        "gpu_rows_per_s": round(args.rows / gpu_s), "cpu_rows_per_s": round(args.rows / cpu_s),
        "detected_fraction": round(detected, 3), "false_alarm_fraction": round(false_alarms, 4), **timings,
    }))


if __name__ == "__main__":
    main()
