"""Registered versions made from a trained one, for the promotion tests: same network, another threshold, another
feature spec, or an architecture its weights do not fit (each a complete, verified version folder)."""
from __future__ import annotations

import shutil
from pathlib import Path

from model_handlers.manifest import MANIFEST
from model_handlers.model_version import ModelVersion, write_model_version
from training.register import Registration, register_run

EXPERIMENT = "promotion-tests"


def variant(source: ModelVersion, folder: Path, threshold: float | None = None, window: int | None = None,
            hidden: list[int] | None = None) -> ModelVersion:
    """A copy of ``source`` with the changes given, written and manifested like any trained version."""
    shutil.copytree(source.path, folder)
    (folder / MANIFEST).unlink()
    spec = source.feature_spec if window is None else source.feature_spec.model_copy(update={"window": window})
    architecture = source.architecture if hidden is None else {**source.architecture, "hidden": hidden}
    return write_model_version(folder, spec, architecture, threshold or source.threshold, {}, source.name)


def register(tracking_uri: str, root: Path, name: str, version: ModelVersion, promote: bool = False) -> Registration:
    """Register ``version`` as the next version of ``name`` (the first becomes champion)."""
    return register_run(tracking_uri, EXPERIMENT, root / "mlartifacts", name, version.path, {}, {"eval_f1": 0.5}, [],
                        "eval_f1", promote)
