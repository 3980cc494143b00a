"""GPU path check: train the autoencoder on CUDA, save its bundle, load it on CUDA and CPU, compare and time.

Runs where CUDA is present (exits non-zero otherwise); needs torch, numpy, safetensors, pydantic, tqdm only.
Last output line is JSON.

    python benchmarks/gpu_check.py [--rows 200000]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from features.spec import FeatureSpec
from model_handlers.model_version import ModelBundle, write_bundle
from model_handlers.torch_model import LoadedModel, resolve_device
from training.train import fit_autoencoder

SPEC = FeatureSpec(sensors=tuple(f"s{i}" for i in range(8)), window=30)


def timed_errors(model: LoadedModel, features: np.ndarray, repeats: int = 3) -> tuple[np.ndarray, float]:
    model.errors(features[:1024])
    started = time.perf_counter()
    for _ in range(repeats):
        errors = model.errors(features)
    return errors, (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("CUDA is not available here")
    rng = np.random.default_rng(0)
    dim = len(SPEC.feature_names)
    mixing = rng.normal(size=(8, dim))
    normal = (rng.normal(size=(args.rows, 8)) @ mixing + 0.05 * rng.normal(size=(args.rows, dim))).astype(np.float32)
    anomalous = normal[:2000] + rng.normal(0, 3, size=(2000, dim)).astype(np.float32)
    train, holdout = normal[: int(0.8 * args.rows)], normal[int(0.8 * args.rows):]
    timings = {}
    for device in ("gpu", "cpu"):
        started = time.perf_counter()
        fit = fit_autoencoder(train, holdout, (32, 8), 5, 1024, 1e-3, 0.999, 1.5, device=device, progress=False)
        timings[f"train_{device}_s"] = round(time.perf_counter() - started, 2)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_bundle(Path(tmp) / "bundle", fit.network, (32, 8), SPEC, fit.threshold, {}, "gpu-check")
        reopened = ModelBundle.open(bundle.path)
        gpu = LoadedModel(reopened, resolve_device("gpu"))
        cpu = LoadedModel(reopened, resolve_device("cpu"))
        gpu_errors, gpu_s = timed_errors(gpu, normal)
        cpu_errors, cpu_s = timed_errors(cpu, normal)
        detected = float((gpu.errors(anomalous) >= fit.threshold).mean())
        false_alarms = float((gpu_errors >= fit.threshold).mean())
    print(json.dumps({
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "auto_device": str(resolve_device("auto")),
        "network_on": str(next(gpu.network.parameters()).device), "rows": args.rows,
        "max_abs_diff_gpu_cpu": float(np.max(np.abs(gpu_errors - cpu_errors))),
        "allclose": bool(np.allclose(gpu_errors, cpu_errors, rtol=1e-3, atol=1e-5)),
        "gpu_rows_per_s": round(args.rows / gpu_s), "cpu_rows_per_s": round(args.rows / cpu_s),
        "detected_fraction": round(detected, 3), "false_alarm_fraction": round(false_alarms, 4), **timings,
    }))


if __name__ == "__main__":
    main()
