"""A model bundle: the folder a registered model version holds.

    model.safetensors   network weights (a state_dict; never a pickled Python object)
    model.json          architecture, feature spec, calibrated threshold, name and version
    transform/          the MLTransform artifacts fitted on the training features
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from features.spec import FeatureSpec
from model_handlers.networks import Autoencoder

WEIGHTS = "model.safetensors"
META = "model.json"
TRANSFORM = "transform"


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A bundle on local disk, read-only."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> "ModelBundle":
        path = Path(path)
        meta_file = path / META
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not a model bundle: {META} is missing")
        return cls(path, json.loads(meta_file.read_text()))

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.model_validate(self.meta["feature_spec"])

    @property
    def threshold(self) -> float:
        """The raw reconstruction-error threshold calibrated on held-out normal data."""
        return float(self.meta["threshold"])

    @property
    def transform_dir(self) -> Path:
        return self.path / TRANSFORM

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "local"))

    def with_identity(self, name: str, version: str) -> "ModelBundle":
        """The same bundle labelled with the registry's name and version."""
        return dataclasses.replace(self, meta={**self.meta, "name": name, "version": version})

    def load_network(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        arch = self.meta["architecture"]
        if arch["kind"] != "autoencoder":
            raise ValueError(f"unknown architecture {arch['kind']!r} in {self.path / META}")
        network = Autoencoder(arch["input_dim"], tuple(arch["hidden"]))
        network.load_state_dict(load_file(str(self.path / WEIGHTS)))
        return network.to(device).eval()


def write_bundle(
    path: Path, network: Autoencoder, hidden: tuple[int, ...], spec: FeatureSpec, threshold: float,
    metrics: dict[str, float], name: str,
) -> ModelBundle:
    """Write weights and metadata into ``path`` (the transform/ folder is written by the feature pipeline)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(path / WEIGHTS))
    meta = {
        "architecture": {"kind": "autoencoder", "input_dim": len(spec.feature_names), "hidden": list(hidden)},
        "feature_spec": spec.model_dump(mode="json"),
        "threshold": threshold,
        "metrics": metrics,
        "name": name,
    }
    (path / META).write_text(json.dumps(meta, indent=2))
    return ModelBundle(path, meta)
