"""Train -> evaluate -> bundle -> register, for one model version."""
from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from torch import nn

from features.metadata import metadata_records, read_metadata
from features.spec import FeatureSpec
from model_handlers import forecaster
from model_handlers.detector import KIND as DETECTOR
from model_handlers.model_version import TRANSFORM, write_model_version
from model_handlers.networks import Autoencoder
from model_handlers.torch_model import save_network
from training.feature_pipeline import fitted_spec, run_feature_pipeline
from training.register import Registration, check_tracking_server, register_run
from training.settings import TrainingSettings
from training.simulate import read_frame
from training.detector import check_detector_spec, fit_detector_version, shard_errors
from training.train import detection_metrics, fit_network, split_holdout

EVAL_METRIC = "eval_f1"


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    bundle_dir: Path
    metrics: dict[str, float]
    registration: Registration


def _plots(out_dir: Path, losses: list[float], holdout: np.ndarray, eval_errors: np.ndarray, labels: np.ndarray,
           threshold: float) -> list[Path]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.5), dpi=90)
    loss_axes, error_axes = figure.subplots(1, 2)
    if losses:
        loss_axes.plot(range(1, len(losses) + 1), losses)
        loss_axes.set(title="training loss", xlabel="epoch", ylabel="reconstruction MSE", yscale="log")
    else:
        loss_axes.set_axis_off()
        loss_axes.set_title("fitted in closed form (no epochs)")
    low = max(1e-6, min(holdout.min(), eval_errors.min()))
    bins = np.logspace(np.log10(low), np.log10(eval_errors.max() + 1e-9), 60)
    error_axes.hist(holdout, bins=bins, alpha=0.6, label="held-out normal", density=True)
    error_axes.hist(eval_errors[labels == 1], bins=bins, alpha=0.6, label="evaluation faults", density=True)
    error_axes.axvline(threshold, color="red", linestyle="--", label="threshold")
    error_axes.set(title="raw score (reconstruction error, or the detector's evidence)", xscale="log")
    error_axes.legend()
    figure.tight_layout()
    path = out_dir / "training.png"
    figure.savefig(path)
    return [path]


def _new_network(spec: FeatureSpec, training: TrainingSettings) -> tuple[nn.Module | None, dict[str, Any], Callable]:
    """``training.model``'s new network (seeded; the detector's is fitted from the data), the architecture the
    version records, and how it is saved."""
    torch.manual_seed(training.seed)
    if training.model == DETECTOR:
        check_detector_spec(spec)
        return None, {"kind": DETECTOR}, save_network
    if training.model == forecaster.KIND:
        network = forecaster.build_forecaster(spec, training.patchtst.model_dump())
        return network, {"kind": forecaster.KIND, "lags": spec.lags}, forecaster.save_forecaster
    architecture = {"kind": "autoencoder", "input_dim": len(spec.feature_names), "hidden": list(training.hidden)}
    return Autoencoder(len(spec.feature_names), training.hidden), architecture, save_network


def device_metadata(spec: FeatureSpec, training: TrainingSettings) -> dict[str, dict[str, Any]] | None:
    """The device metadata records training joins, by device id (None when the spec uses no metadata)."""
    if not spec.metadata:
        return None
    if training.device_metadata is None:
        raise ValueError("training.device_metadata: features.metadata lists device metadata fields: name the file "
                         "(CSV or Parquet, one row per device) training joins them from")
    return metadata_records(read_metadata(training.device_metadata, spec.metadata), spec.metadata)


def train_and_register(train_table: Path, eval_table: Path, spec: FeatureSpec, training: TrainingSettings,
                       work_dir: Path,
                       tracking_uri: str, model_name: str, options: PipelineOptions, promote: bool = False,
                       progress: bool = True) -> TrainingRun:
    """Fit MLTransform and ``training.model`` on ``train_table`` (normal data), score ``eval_table`` (labelled)."""
    check_tracking_server(tracking_uri)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    spec = fitted_spec(read_frame(train_table), spec)
    metadata = device_metadata(spec, training)
    network, architecture, save = _new_network(spec, training)  # before any work: a bad model config fails here
    bundle_dir = work_dir / "bundles" / run_id
    scratch = work_dir / "features" / run_id
    train_shards = run_feature_pipeline(train_table, spec, bundle_dir / TRANSFORM, scratch / "train", True, options,
                                        metadata)
    if training.model == DETECTOR:
        fit, architecture = fit_detector_version(train_shards, spec, training)
        train = fit.holdout_errors
    else:
        train, holdout = split_holdout([shard.features[shard.full_windows(spec.window)] for shard in train_shards],
                                       training.holdout_fraction)
        fit = fit_network(network, train, holdout, training.epochs, training.batch_size, training.learning_rate,
                          training.threshold_quantile, training.threshold_margin, training.seed, training.device,
                          progress)
    eval_shards = run_feature_pipeline(eval_table, spec, bundle_dir / TRANSFORM, scratch / "eval", False, options,
                                       metadata)
    labels_by_id = read_frame(eval_table).set_index("event_id")["label"]
    event_ids = np.concatenate([shard.event_ids[shard.full_windows(spec.window)] for shard in eval_shards])
    labels = labels_by_id.reindex(event_ids).to_numpy()
    if np.isnan(labels.astype(float)).any():
        raise ValueError(f"evaluation table {eval_table} has events without a label")
    errors = shard_errors(fit.network, architecture, eval_shards, spec)
    metrics = {f"eval_{key}": value for key, value in detection_metrics(errors, labels, fit.threshold).items()}
    metrics.update(threshold=fit.threshold, train_rows=float(len(train)), holdout_rows=float(len(fit.holdout_errors)),
                   eval_rows=float(len(errors)))
    if fit.train_loss:
        metrics["final_train_loss"] = fit.train_loss[-1]
    save(fit.network, bundle_dir)
    version = write_model_version(bundle_dir, spec, architecture, fit.threshold, metrics, model_name)
    params = {**training.model_dump(), "sensors": ",".join(spec.sensors), "window": spec.window,
              "stats": ",".join(spec.stats), "lags": spec.lags, "train_table": str(train_table),
              "eval_table": str(eval_table)}
    registration = register_run(tracking_uri, training.experiment, work_dir / "mlartifacts", model_name, version.path,
                                params, metrics, _plots(scratch, fit.train_loss, fit.holdout_errors, errors, labels,
                                                        fit.threshold), EVAL_METRIC, promote)
    return TrainingRun(version.path, metrics, registration)
