"""Train an anomaly network (the autoencoder, or the transformer forecaster) on normal-operation features and calibrate
its threshold on held-out normal data."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from model_handlers.contract import error_to_score
from model_handlers.networks import Autoencoder, reconstruction_error
from model_handlers.torch_model import resolve_device


@dataclasses.dataclass
class FitResult:
    network: nn.Module
    threshold: float
    train_loss: list[float]
    holdout_errors: np.ndarray


def split_holdout(per_device: list[np.ndarray], fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The last ``fraction`` of each device's series is held out (a time split: no look-ahead into the holdout)."""
    train, holdout = [], []
    for features in per_device:
        cut = max(1, int(round(len(features) * (1.0 - fraction))))
        train.append(features[:cut])
        holdout.append(features[cut:])
    return np.concatenate(train), np.concatenate(holdout)


def errors_of(network: nn.Module, features: np.ndarray, device: torch.device, chunk: int = 65536) -> np.ndarray:
    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), chunk):
            x = torch.from_numpy(np.ascontiguousarray(features[start:start + chunk], dtype=np.float32)).to(device)
            out.append(reconstruction_error(network, x).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def fit_autoencoder(train: np.ndarray, holdout: np.ndarray, hidden: tuple[int, ...], epochs: int, batch_size: int,
                    learning_rate: float, threshold_quantile: float, threshold_margin: float, seed: int = 0,
                    device: str = "auto", progress: bool = True) -> FitResult:
    """A new autoencoder fitted by ``fit_network``."""
    torch.manual_seed(seed)
    return fit_network(Autoencoder(train.shape[1], hidden), train, holdout, epochs, batch_size, learning_rate,
                       threshold_quantile, threshold_margin, seed, device, progress)


def fit_network(network: nn.Module, train: np.ndarray, holdout: np.ndarray, epochs: int, batch_size: int,
                learning_rate: float, threshold_quantile: float, threshold_margin: float, seed: int = 0,
                device: str = "auto", progress: bool = True) -> FitResult:
    """Fit ``network`` (feature rows -> their reconstruction or forecast) on ``train`` to the mean squared error;
    the threshold is the holdout error quantile times a margin."""
    target = resolve_device(device)
    network = network.to(target)
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    data = torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32)).to(target)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    losses = []
    bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not progress)
    for _ in bar:
        network.train()
        order = torch.randperm(len(data), generator=generator).to(target)
        total = 0.0
        for start in range(0, len(data), batch_size):
            x = data[order[start:start + batch_size]]
            loss = reconstruction_error(network, x).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(x)
        schedule.step()
        losses.append(total / len(data))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    holdout_errors = errors_of(network, holdout, target)
    threshold = float(np.quantile(holdout_errors, threshold_quantile) * threshold_margin)
    return FitResult(network.cpu().eval(), max(threshold, 1e-12), losses, holdout_errors)


def detection_metrics(errors: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Row-level precision/recall/F1 at the threshold and the average precision of the raw scores."""
    predicted = errors >= threshold
    labels = labels.astype(bool)
    tp = float(np.sum(predicted & labels))
    fp = float(np.sum(predicted & ~labels))
    fn = float(np.sum(~predicted & labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    order = np.argsort(-errors, kind="stable")
    hits = labels[order]
    cumulative = np.cumsum(hits)
    average_precision = float(np.sum((cumulative / np.arange(1, len(hits) + 1))[hits]) / max(1, hits.sum()))
    scores = error_to_score(errors, threshold)
    return {"precision": precision, "recall": recall, "f1": f1, "average_precision": average_precision,
            "false_alarm_rate": fp / max(1.0, float(np.sum(~labels))), "mean_score": float(np.mean(scores))}
