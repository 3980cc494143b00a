"""Shared fixtures: a small simulated fleet and one model trained and registered once per session."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclasses.dataclass(frozen=True)
class Trained:
    config: object
    data: object
    run: object
    bundle: object


def small_config(work_dir: Path, **overrides):
    from inference_pipeline.config import load_config

    base = {"work_dir": str(work_dir), "simulation.devices": 4, "simulation.duration_s": 900,
            "simulation.train_duration_s": 1800, "training.epochs": 8}
    base.update(overrides)
    return load_config(REPO / "configs" / "local.yaml", base)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """Simulate -> train -> register once; tests read (never modify) the result."""
    from inference_pipeline.main_job import _model_name, simulate_datasets
    from inference_pipeline.pipeline import pipeline_options
    from model_handlers.mlflow_registry import resolve_bundle
    from training.workflow import train_and_register

    config = small_config(tmp_path_factory.mktemp("trained"))
    data = simulate_datasets(config)
    run = train_and_register(data.train, data.eval, config.features, config.training, config.work_path,
                             config.tracking_uri, _model_name(config), pipeline_options(config), progress=False)
    bundle = resolve_bundle(config.model.uri, config.tracking_uri, config.work_path / "models")
    return Trained(config, data, run, bundle)
