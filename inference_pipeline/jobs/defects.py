"""``iotml train-defects``: the AI4I failure classifier (``training.ai4i``) trained, evaluated and registered with the
config's feature spec and registry, its events file written for ``configs/ai4i.yaml`` to replay."""
from __future__ import annotations

from pathlib import Path

from inference_pipeline.builder import pipeline_options
from inference_pipeline.config import Config
from training.ai4i import Ai4iRun, train_ai4i


def train_defect_classifier(config: Config, data: str | Path, trees: int = 300, promote: bool = False) -> Ai4iRun:
    return train_ai4i(data, config.features, config.work_path, config.tracking_uri, pipeline_options(config), trees,
                      config.simulation.seed, promote)
