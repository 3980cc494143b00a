"""The anomaly networks we ship: an autoencoder over a window-feature vector (the error is the anomaly evidence), and
the per-device residual detector (``model_handlers.detector``)."""
from __future__ import annotations

import torch
from torch import nn

from model_handlers.detector import KIND as DETECTOR, ResidualDetector


class Autoencoder(nn.Module):
    """A symmetric MLP autoencoder; ``hidden`` lists the encoder widths down to the bottleneck."""

    def __init__(self, input_dim: int, hidden: tuple[int, ...] = (32, 8)):
        super().__init__()
        widths = (input_dim, *hidden)
        encoder: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            encoder += [nn.Linear(w_in, w_out), nn.GELU()]
        decoder: list[nn.Module] = []
        reverse = widths[::-1]
        for i, (w_in, w_out) in enumerate(zip(reverse[:-1], reverse[1:])):
            decoder.append(nn.Linear(w_in, w_out))
            if i < len(reverse) - 2:
                decoder.append(nn.GELU())
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def reconstruction_error(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean squared reconstruction error per row."""
    return ((model(x) - x) ** 2).mean(dim=1)


ARCHITECTURES: dict[str, type[nn.Module]] = {"autoencoder": Autoencoder, DETECTOR: ResidualDetector}
