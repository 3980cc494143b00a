"""``iotml features push --from FILE``: load a device metadata table (CSV or Parquet, one row per device) into the
configured online feature store, for the stream's enrichment step to join."""
from __future__ import annotations

from pathlib import Path

from features.metadata import read_metadata
from inference_pipeline.config import Config, ConfigError
from inference_pipeline.connectors.feast import FeastSettings, push_metadata


def push_device_metadata(config: Config, path: str | Path) -> int:
    """Materialise ``path`` into ``config.enrichment``'s store for the fields of ``features.metadata``; returns the
    devices written. Raises ConfigError naming the missing setting, ValueError for a bad file."""
    if not config.features.metadata:
        raise ConfigError("features.metadata: no device metadata fields are configured; list the fields to push")
    if config.enrichment is None:
        raise ConfigError("enrichment: no feature store is configured (enrichment.store)")
    store = config.enrichment.store
    if not isinstance(store, FeastSettings):
        raise ConfigError(f"enrichment.store: `iotml features push` loads a Feast store; load {store.store} with "
                          "its own tools (a Dataflow or BigQuery export) from the same table")
    frame = read_metadata(path, config.features.metadata)
    return push_metadata(store, config.features.metadata, frame, config.enrichment.timeout_s)


def with_device_metadata(config: Config, path: Path) -> Config:
    """The config with ``training.device_metadata`` defaulting to ``path`` (the simulator's device table) when its
    features use device metadata, that table loaded into the store when enrichment is configured."""
    if not config.features.metadata:
        return config
    if config.training.device_metadata is None:
        training = config.training.model_copy(update={"device_metadata": str(path)})
        config = config.model_copy(update={"training": training})
    if config.enrichment is not None and isinstance(config.enrichment.store, FeastSettings):
        push_device_metadata(config, config.training.device_metadata)
    return config
