"""Defect prediction on AI4I 2020 (a milling machine, one row per production cycle): a supervised failure
classifier, evaluated over time, registered as an ``mlflow``-kind model version and served by ``configs/ai4i.yaml``.

- **Events.** The table becomes one machine's event stream (``ai4i_events``): a cycle a second in ``udi`` order, the
  product quality L/M/H as a reading (0/1/2), the failure flags kept as labels. The same file is what the stream
  replays, so training and serving read the same events.
- **Features.** The config's feature spec (``configs/ai4i.yaml``: a window of 2 with the ``last`` statistic, as each
  cycle is a different product, and three derived readings carrying the physics the failure modes follow: mechanical
  power, the process-air temperature rise, tool strain = wear x torque), through the shared featurise rule and
  MLTransform like every model's.
- **Model.** One random forest (scikit-learn) for any failure and one per failure type, combined by a custom pyfunc
  into class probabilities (``no_failure`` and each type): the rules are thresholds on those derived readings.
- **Evaluation.** An expanding-window backtest in time order: for each block of ``block_fraction`` of the cycles from
  ``first_fraction`` on, fit on every cycle before it and score it. PR-AUC overall and per failure type, and F1 at
  the chosen threshold (the failure probability that maximises F1 on the backtest), against the class prior and a
  logistic regression on the raw columns. A single split would not do: heat-dissipation failures cluster in one hot
  spell, so a hold-out after it holds none of them.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from apache_beam.options.pipeline_options import PipelineOptions
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from features.spec import FeatureSpec
from model_handlers.model_version import TRANSFORM, write_model_version
from training.datasets import load_ai4i
from training.feature_pipeline import run_feature_pipeline
from training.register import Registration, register_run

MACHINE = "ai4i-mill"
FAILURE_TYPES = ("twf", "hdf", "pwf", "osf", "rnf")
CLASSES = ("no_failure", *(t.upper() for t in FAILURE_TYPES))
RAW = ("air_temperature_k", "process_temperature_k", "rotational_speed_rpm", "torque_nm", "tool_wear_min", "quality")
QUALITY = {"L": 0.0, "M": 1.0, "H": 2.0}
MODEL_NAME = "ai4i-failure"
EVAL_METRIC = "backtest_pr_auc"


def ai4i_events(frame: pd.DataFrame, start: float = 1767225600.0) -> pd.DataFrame:
    """The AI4I table as one machine's events (``device_id``, ``ts``, ``event_id``, the readings) with its labels
    (``machine_failure`` and the type flags)."""
    frame = frame.sort_values("udi")
    events = pd.DataFrame({"device_id": MACHINE, "ts": start + frame["udi"].to_numpy(dtype=np.float64),
                           "event_id": "ai4i-" + frame["udi"].astype(str)})
    for column in RAW[:-1]:
        events[column] = frame[column].to_numpy(dtype=np.float64)
    unknown = sorted(set(frame["type"]) - set(QUALITY))
    if unknown:
        raise ValueError(f"AI4I column 'type' holds {unknown}; expected L, M or H")
    events["quality"] = frame["type"].map(QUALITY).to_numpy(dtype=np.float64)
    for column in ("machine_failure", *FAILURE_TYPES):
        events[column] = frame[column].to_numpy(dtype=np.int64)
    return events.reset_index(drop=True)


class FailureClassifier(mlflow.pyfunc.PythonModel):
    """Class probabilities from one forest for any failure and one per type: P(no_failure) = 1 - P(failure), each
    type's share of P(failure) proportional to its own forest's probability."""

    def __init__(self, any_failure: RandomForestClassifier, by_type: dict[str, RandomForestClassifier | None]):
        self.any_failure = any_failure
        self.by_type = by_type

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        failure = _positive(self.any_failure, model_input)
        shares = np.column_stack([_positive(self.by_type[t], model_input) for t in FAILURE_TYPES]) + 1e-9
        shares /= shares.sum(axis=1, keepdims=True)
        return np.column_stack([1.0 - failure, shares * failure[:, None]])

    def type_probabilities(self, x: pd.DataFrame) -> np.ndarray:
        """Each type's own forest's probability (rows x ``FAILURE_TYPES``): what ranks cycles for one failure type."""
        return np.column_stack([_positive(self.by_type[t], x) for t in FAILURE_TYPES])


def _positive(model: RandomForestClassifier | None, x: pd.DataFrame) -> np.ndarray:
    """The positive class's probability (0 for a type never seen in training)."""
    if model is None:
        return np.zeros(len(x))
    return model.predict_proba(x)[:, list(model.classes_).index(1)]


def fit_classifier(x: pd.DataFrame, labels: pd.DataFrame, trees: int, seed: int) -> FailureClassifier:
    def forest(y: np.ndarray) -> RandomForestClassifier | None:
        if y.sum() == 0:
            return None
        return RandomForestClassifier(trees, random_state=seed, n_jobs=-1).fit(x, y)

    return FailureClassifier(forest(labels["machine_failure"].to_numpy()),
                             {t: forest(labels[t].to_numpy()) for t in FAILURE_TYPES})


@dataclasses.dataclass(frozen=True)
class Backtest:
    """Out-of-time predictions: the scored cycles' labels, class probabilities, each type's own probability and the
    raw-column baseline's failure probability."""

    labels: pd.DataFrame
    probabilities: np.ndarray
    by_type: np.ndarray
    baseline: np.ndarray


def backtest(x: pd.DataFrame, raw: pd.DataFrame, labels: pd.DataFrame, trees: int, seed: int,
             first_fraction: float = 0.3, block_fraction: float = 0.1) -> Backtest:
    """Expanding-window backtest in row (time) order: each block scored by models fitted on every row before it."""
    n = len(x)
    starts = range(int(n * first_fraction), n, max(1, int(n * block_fraction)))
    probabilities, by_type, baseline = [], [], []
    for start in starts:
        stop = min(n, start + max(1, int(n * block_fraction)))
        past, block = slice(0, start), slice(start, stop)
        model = fit_classifier(x.iloc[past], labels.iloc[past], trees, seed)
        probabilities.append(model.predict(None, x.iloc[block]))
        by_type.append(model.type_probabilities(x.iloc[block]))
        logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        logistic.fit(raw.iloc[past], labels["machine_failure"].iloc[past])
        baseline.append(logistic.predict_proba(raw.iloc[block])[:, 1])
    scored = slice(int(n * first_fraction), n)
    return Backtest(labels.iloc[scored].reset_index(drop=True), np.concatenate(probabilities),
                    np.concatenate(by_type), np.concatenate(baseline))


def evaluate(result: Backtest) -> tuple[float, dict[str, float]]:
    """The threshold on the failure probability that maximises F1, and the metrics at it."""
    failure = 1.0 - result.probabilities[:, 0]
    y = result.labels["machine_failure"].to_numpy()
    candidates = np.unique(failure[failure > 0])
    f1s = [f1_score(y, failure >= t) for t in candidates] or [0.0]
    threshold = float(candidates[int(np.argmax(f1s))]) if len(candidates) else 0.5
    kind = result.probabilities[:, 1:].argmax(axis=1)
    metrics = {"backtest_pr_auc": average_precision_score(y, failure), "backtest_f1": f1_score(y, failure >= threshold),
               "prior_pr_auc": float(y.mean()), "logistic_raw_pr_auc": average_precision_score(y, result.baseline),
               "threshold": threshold, "backtest_rows": float(len(y)), "backtest_failures": float(y.sum())}
    for i, t in enumerate(FAILURE_TYPES):
        flags = result.labels[t].to_numpy()
        if flags.sum():
            metrics[f"{t}_pr_auc"] = average_precision_score(flags, result.by_type[:, i])
            metrics[f"{t}_f1"] = f1_score(flags, (failure >= threshold) & (kind == i))
            metrics[f"{t}_prior_pr_auc"] = float(flags.mean())
            metrics[f"{t}_failures"] = float(flags.sum())
    return threshold, {key: float(value) for key, value in metrics.items()}


def _requirements() -> list[str]:
    """What the model needs, pinned to what trained it (given rather than inferred: MLflow infers by loading the
    model in a subprocess)."""
    import sklearn

    return [f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}", f"numpy=={np.__version__}"]


@dataclasses.dataclass(frozen=True)
class Ai4iRun:
    bundle_dir: Path
    events: Path
    metrics: dict[str, float]
    registration: Registration


def train_ai4i(data: str | Path, spec: FeatureSpec, work_dir: Path, tracking_uri: str, options: PipelineOptions,
               trees: int = 300, seed: int = 0, promote: bool = False) -> Ai4iRun:
    """AI4I -> events -> features (MLTransform fitted) -> backtest -> final fit on every cycle -> an ``mlflow``-kind
    version registered as ``ai4i-failure``. Writes the events file the stream replays (``<work_dir>/ai4i/events
    .parquet``)."""
    events = ai4i_events(load_ai4i(data))
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    folder = work_dir / "ai4i"
    scratch = folder / "features" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    events_file = folder / "events.parquet"
    events.to_parquet(events_file, index=False)
    shards = run_feature_pipeline(events_file, spec, scratch / TRANSFORM, scratch / "rows", True, options)
    (shard,) = shards
    by_id = events.set_index("event_id")
    labels = by_id.loc[shard.event_ids, ["machine_failure", *FAILURE_TYPES]].reset_index(drop=True)
    x = pd.DataFrame(shard.features, columns=spec.feature_names)
    raw = by_id.loc[shard.event_ids, list(RAW)].reset_index(drop=True)  # the baseline's columns, unscaled
    threshold, metrics = evaluate(backtest(x, raw, labels, trees, seed))
    model = fit_classifier(x, labels, trees, seed)
    bundle_dir = work_dir / "bundles" / run_id
    mlflow.pyfunc.save_model(str(bundle_dir), python_model=model, pip_requirements=_requirements(),
                             signature=mlflow.models.infer_signature(x.iloc[:5], model.predict(None, x.iloc[:5])))
    shutil.copytree(scratch / TRANSFORM, bundle_dir / TRANSFORM)
    architecture = {"kind": "mlflow", "output": "classes", "classes": list(CLASSES), "normal_class": CLASSES[0]}
    version = write_model_version(bundle_dir, spec, architecture, threshold, metrics, MODEL_NAME)
    registration = register_run(tracking_uri, MODEL_NAME, work_dir / "mlartifacts", MODEL_NAME, version.path,
                                {"trees": trees, "seed": seed, "data": str(data)}, metrics, [], EVAL_METRIC, promote)
    return Ai4iRun(version.path, events_file, metrics, registration)
