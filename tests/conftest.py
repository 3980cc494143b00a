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
    version: object


def small_config(work_dir: Path, **overrides):
    from inference_pipeline.config import load_config

    base = {"work_dir": str(work_dir), "simulation.devices": 4, "simulation.duration_s": 900,
            "simulation.train_duration_s": 1800, "training.epochs": 8}
    base.update(overrides)
    return load_config(REPO / "configs" / "local.yaml", base)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """Simulate -> train -> register once; tests read (never modify) the result."""
    from inference_pipeline.jobs.main_job import train_simulated

    config = small_config(tmp_path_factory.mktemp("trained"))
    return Trained(config, *train_simulated(config, progress=False))
