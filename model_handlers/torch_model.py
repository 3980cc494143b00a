"""A version's torch network on its device (CPU or CUDA), free of Beam: what the handler, the pyfunc model and
training share."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model_handlers.contract import ModelId, ModelOutput, sensor_shares
from model_handlers.model_version import WEIGHTS, ModelVersion
from model_handlers.networks import ARCHITECTURES, error_to_score


def resolve_device(requested: str) -> torch.device:
    """'auto' takes CUDA when present; 'gpu' insists on it; 'cpu' never uses it."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "gpu":
        raise RuntimeError("model.device is 'gpu' but CUDA is not available on this worker")
    return torch.device("cpu")


def padded_rows(rows: int) -> int:
    """The row count a forward pass runs on: a power of two from 64 up to 1024, then a multiple of 1024.

    oneDNN (PyTorch's CPU kernels) JIT-compiles and caches kernels per input shape: a live stream's batch sizes vary
    from one batch to the next, which cost a compile (milliseconds) and a cached kernel (~256 KB, up to 1024 of them)
    for each new size. Padding to a few sizes keeps both to a handful; the padding rows cost next to nothing.
    """
    if rows <= 1024:
        return max(64, 1 << max(rows - 1, 0).bit_length())
    return -(-rows // 1024) * 1024


def save_network(network: torch.nn.Module, path: Path) -> None:
    """The network's weights as safetensors (a state_dict; never a pickled object)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(path / WEIGHTS))


def load_network(version: ModelVersion, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The version's network, built from its ``architecture`` and loaded with its weights once the version's files
    are verified unchanged since it was opened."""
    version.verify()
    architecture: dict[str, Any] = version.architecture
    kind = architecture.pop("kind")
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind!r} in {version.path}; known: {sorted(ARCHITECTURES)}")
    network = ARCHITECTURES[kind](**architecture)
    network.load_state_dict(load_file(str(version.path / WEIGHTS)))
    return network.to(device).eval()


class LoadedModel:
    """A version's autoencoder on its device: scaled feature rows in, the model output contract out."""

    def __init__(self, version: ModelVersion, device: torch.device):
        self.version = version
        self.device = device
        self.network = load_network(version, device)
        self.model_id = ModelId(version.name, version.version, version.transform_id)
        spec = version.feature_spec
        self._sensors, self._stats = spec.sensors, spec.stats

    def squared_errors(self, features: np.ndarray) -> np.ndarray:
        """Per-feature squared reconstruction error of each row (the forward pass runs padded to ``padded_rows``)."""
        rows = len(features)
        padded = np.zeros((padded_rows(rows), features.shape[1]), dtype=np.float32)
        padded[:rows] = features
        with torch.inference_mode():
            x = torch.from_numpy(padded).to(self.device)
            return ((self.network(x) - x) ** 2)[:rows].cpu().numpy()

    def score(self, features: np.ndarray) -> ModelOutput:
        """Raw score = mean squared reconstruction error; contributions = each sensor's share of it."""
        squared = self.squared_errors(features)
        errors = squared.mean(axis=1)
        return ModelOutput(
            raw_score=errors.astype(np.float64), anomaly_score=error_to_score(errors.astype(np.float64),
                                                                              self.version.threshold),
            model=self.model_id, sensor_names=self._sensors,
            sensor_contributions=sensor_shares(squared, self._sensors, self._stats))
