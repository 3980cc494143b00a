"""A bundle's network on its device (CPU or CUDA), free of Beam: what the handler and training share."""
from __future__ import annotations

import numpy as np
import torch

from model_handlers.bundle import ModelBundle
from model_handlers.networks import reconstruction_error


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


class LoadedModel:
    """A network on its device with the bundle it came from."""

    def __init__(self, bundle: ModelBundle, device: torch.device):
        self.bundle = bundle
        self.device = device
        self.network = bundle.load_network(device)
        self.model_id = f"{bundle.name}/{bundle.version}"

    def errors(self, features: np.ndarray) -> np.ndarray:
        """Reconstruction error per row of ``features`` (run padded to ``padded_rows``)."""
        rows = len(features)
        padded = np.zeros((padded_rows(rows), features.shape[1]), dtype=np.float32)
        padded[:rows] = features
        with torch.inference_mode():
            x = torch.from_numpy(padded).to(self.device)
            return reconstruction_error(self.network, x)[:rows].cpu().numpy()
