"""A version's torch network on its device (CPU or CUDA), free of Beam: what the handler, the pyfunc model and
training share."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model_handlers import detector, forecaster
from model_handlers.contract import ModelId, ModelOutput, error_to_score
from model_handlers.model_version import WEIGHTS, ModelVersion
from model_handlers.networks import ARCHITECTURES


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
    are verified unchanged since it was opened (a Hugging Face forecaster from its own folder)."""
    architecture: dict[str, Any] = version.architecture
    kind = architecture.pop("kind")
    if kind == forecaster.KIND:
        return forecaster.load_forecaster(version, device)
    version.verify()
    architecture.pop("device_index", None)
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind!r} in {version.path}; known: {sorted(ARCHITECTURES)}")
    network = ARCHITECTURES[kind](**architecture)
    network.load_state_dict(load_file(str(version.path / WEIGHTS)))
    return network.to(device).eval()


class LoadedModel:
    """A version's network (the autoencoder, a forecaster whose "reconstruction" is its forecast, or the per-device
    residual detector) on its device: scaled feature rows in, the model output contract out."""

    def __init__(self, version: ModelVersion, device: torch.device):
        self.version = version
        self.device = device
        self.network = load_network(version, device)
        self.model_id = ModelId(version.name, version.version, version.transform_id)
        spec = version.feature_spec
        self._sensors = spec.channels
        self._window_columns = len(spec.window_feature_names)
        index = version.architecture.get("device_index")
        self._device_index = None if index is None else {name: i for i, name in enumerate(index)}
        # (channels + 1) x features: row j sums channel j's window features (channel-major order, as
        # ``features.window.feature_names``; the device metadata's columns after them belong to no channel), the
        # last row sums them all
        per_sensor = torch.kron(torch.eye(len(spec.channels)), torch.ones(1, len(spec.summaries)))
        per_sensor = torch.nn.functional.pad(per_sensor, (0, len(spec.feature_names) - per_sensor.shape[1]))
        self._reducer = torch.cat([per_sensor, torch.ones(1, len(spec.feature_names))]).to(device)

    @property
    def per_device(self) -> bool:
        """Whether rows are scored by their device's own model (and so need their device ids and times)."""
        return self._device_index is not None

    def error_parts(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's mean squared reconstruction error, and each sensor's share of it (rows with no error: 0).

        Reduced on the model's device, by one matrix product with ``_reducer`` (per-sensor sums and the row total at
        once, rows as columns: on a CPU, 4x faster than reductions over six-wide groups or a product with rows as
        rows; one kernel on a GPU), so a GPU sends back ``1 + sensors`` numbers a row rather than the
        reconstruction. The forward pass runs padded to
        ``padded_rows``."""
        rows, width = features.shape
        if padded_rows(rows) != rows or features.dtype != np.float32 or not features.flags.c_contiguous:
            padded = np.zeros((padded_rows(rows), width), dtype=np.float32)
            padded[:rows] = features
            features = padded
        with torch.inference_mode():
            x = torch.from_numpy(features).to(self.device)
            sums = self._reducer @ (self.network(x) - x).square_()[:rows].t()
            total = sums[-1:]
            parts = torch.cat([total / width, sums[:-1] / total.clamp_min(torch.finfo(torch.float32).tiny)])
            parts = parts.cpu().numpy()
        return parts[0], parts[1:].T

    def device_rows(self, device_ids: np.ndarray) -> np.ndarray:
        """Each row's model in the detector's tables: its device's, else the fleet's (0)."""
        names, inverse = np.unique(np.asarray(device_ids, dtype=object).astype(str), return_inverse=True)
        return np.array([self._device_index.get(name, 0) for name in names], dtype=np.int64)[inverse]

    def evidence_parts(self, features: np.ndarray, device_ids: np.ndarray,
                       times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The detector's raw score (calibrated evidence, 1.0 at the limit) and each sensor's share of it."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(features[:, :self._window_columns], dtype=np.float32))
            evidence = self.network(x.to(self.device), torch.from_numpy(np.asarray(times, np.float64)).to(self.device),
                                    torch.from_numpy(self.device_rows(device_ids)).to(self.device))
            raw, shares = detector.detector_scores(evidence)
        return raw.cpu().numpy(), shares.cpu().numpy()

    def score(self, features: np.ndarray, device_ids: np.ndarray | None = None,
              times: np.ndarray | None = None) -> ModelOutput:
        """Raw score = mean squared reconstruction error (the detector: its evidence, for each row's device at its
        time, which it requires); contributions = each sensor's share of it."""
        if self.per_device:
            if device_ids is None or times is None:
                raise ValueError(f"{self.model_id} scores each row with its device's model: it needs the rows' "
                                 f"device ids and event times")
            errors, shares = self.evidence_parts(features, device_ids, times)
        else:
            errors, shares = self.error_parts(features)
        errors = errors.astype(np.float64)
        return ModelOutput(raw_score=errors, anomaly_score=error_to_score(errors, self.version.threshold),
                           model=self.model_id, sensor_names=self._sensors, sensor_contributions=shares)
