"""Train -> evaluate -> bundle -> register, for one model version."""
from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from features.spec import FeatureSpec
from model_handlers.model_version import TRANSFORM, write_model_version
from model_handlers.torch_model import save_network
from training.feature_pipeline import fitted_spec, run_feature_pipeline
from training.register import Registration, check_tracking_server, register_run
from training.simulate import read_frame
from training.train import detection_metrics, errors_of, fit_autoencoder, split_holdout

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
    loss_axes.plot(range(1, len(losses) + 1), losses)
    loss_axes.set(title="training loss", xlabel="epoch", ylabel="reconstruction MSE", yscale="log")
    bins = np.logspace(np.log10(max(1e-6, min(holdout.min(), eval_errors.min()))), np.log10(eval_errors.max() + 1e-9), 60)
    error_axes.hist(holdout, bins=bins, alpha=0.6, label="held-out normal", density=True)
    error_axes.hist(eval_errors[labels == 1], bins=bins, alpha=0.6, label="evaluation faults", density=True)
    error_axes.axvline(threshold, color="red", linestyle="--", label="threshold")
    error_axes.set(title="reconstruction error", xscale="log")
    error_axes.legend()
    figure.tight_layout()
    path = out_dir / "training.png"
    figure.savefig(path)
    return [path]


def train_and_register(train_table: Path, eval_table: Path, spec: FeatureSpec, training, work_dir: Path,
                       tracking_uri: str, model_name: str, options: PipelineOptions, promote: bool = False,
                       progress: bool = True) -> TrainingRun:
    """Fit MLTransform and the autoencoder on ``train_table`` (normal data), score ``eval_table`` (labelled)."""
    check_tracking_server(tracking_uri)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    spec = fitted_spec(read_frame(train_table), spec)
    bundle_dir = work_dir / "bundles" / run_id
    scratch = work_dir / "features" / run_id
    train_shards = run_feature_pipeline(train_table, spec, bundle_dir / TRANSFORM, scratch / "train", True, options)
    train, holdout = split_holdout([shard.features[shard.full_windows(spec.window)] for shard in train_shards],
                                   training.holdout_fraction)
    fit = fit_autoencoder(train, holdout, training.hidden, training.epochs, training.batch_size,
                          training.learning_rate, training.threshold_quantile, training.threshold_margin,
                          training.seed, training.device, progress)
    eval_shards = run_feature_pipeline(eval_table, spec, bundle_dir / TRANSFORM, scratch / "eval", False, options)
    labels_by_id = read_frame(eval_table).set_index("event_id")["label"]
    event_ids = np.concatenate([shard.event_ids[shard.full_windows(spec.window)] for shard in eval_shards])
    labels = labels_by_id.reindex(event_ids).to_numpy()
    if np.isnan(labels.astype(float)).any():
        raise ValueError(f"evaluation table {eval_table} has events without a label")
    errors = errors_of(fit.network, np.concatenate([shard.features[shard.full_windows(spec.window)]
                                                    for shard in eval_shards]), "cpu")
    metrics = {f"eval_{key}": value for key, value in detection_metrics(errors, labels, fit.threshold).items()}
    metrics.update(final_train_loss=fit.train_loss[-1], threshold=fit.threshold, train_rows=float(len(train)),
                   holdout_rows=float(len(holdout)), eval_rows=float(len(errors)))
    save_network(fit.network, bundle_dir)
    architecture = {"kind": "autoencoder", "input_dim": len(spec.feature_names), "hidden": list(training.hidden)}
    version = write_model_version(bundle_dir, spec, architecture, fit.threshold, metrics, model_name)
    params = {**training.model_dump(), "sensors": ",".join(spec.sensors), "window": spec.window,
              "stats": ",".join(spec.stats), "train_table": str(train_table), "eval_table": str(eval_table)}
    registration = register_run(tracking_uri, training.experiment, work_dir / "mlartifacts", model_name, version.path,
                                params, metrics, _plots(scratch, fit.train_loss, fit.holdout_errors, errors, labels,
                                                        fit.threshold), EVAL_METRIC, promote)
    return TrainingRun(version.path, metrics, registration)
