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


class LoadedModel:
    """A network on its device with the bundle it came from."""

    def __init__(self, bundle: ModelBundle, device: torch.device):
        self.bundle = bundle
        self.device = device
        self.network = bundle.load_network(device)
        self.model_id = f"{bundle.name}/{bundle.version}"

    def errors(self, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
            return reconstruction_error(self.network, x).cpu().numpy()
