"""``enrichment.store: feast``: device metadata in a Feast feature store, its online store on Redis.

The feature repository is defined here, from the model's metadata fields: an entity ``device`` (join key
``device_id``) and one feature view (``feature_view``, default ``device_metadata``) with a column per field, its
offline source the Parquet file the last push wrote. ``iotml features push --from FILE`` (``push_metadata``) writes
``feature_store.yaml`` (local registry file, Redis online store) into ``repo``, applies the definitions and writes
the table's rows to the online store; the stream reads them through Beam's own
``FeastFeatureStoreEnrichmentHandler`` (``lookup_handler``).

The Redis connection string carries ``timeout_s`` as its socket timeouts and turns the driver's own retries off
(redis-py retries a timeout three times with backoff up to 10 s by default), so a store that is down or hung fails
a lookup within that time and the enrichment step's bounded retries and fallback apply (``steps.enrich``). A
password is never written to the repo: ``password_env`` names an environment variable that Feast expands when it
reads the file.
"""
from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from features.metadata import ENTITY, MetadataField, without_entity

if TYPE_CHECKING:
    from apache_beam.transforms.enrichment import EnrichmentSourceHandler

STORE_YAML = "feature_store.yaml"


class FeastSettings(BaseModel):
    """``repo``: the feature repository folder (written by ``iotml features push``); ``online_store``: Redis as
    ``host:port`` (a Feast Redis connection string without a password); ``password_env``: the environment variable
    holding the Redis password, if any."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Literal["feast"] = "feast"
    repo: str = "work/feature_repo"
    project: str = Field("iotml", pattern=r"^[A-Za-z0-9_]+$")
    feature_view: str = Field("device_metadata", pattern=r"^[A-Za-z0-9_]+$")
    online_store: str = Field("127.0.0.1:6379", pattern=r"^[^,=\s]+:\d+$")
    password_env: str | None = None

    @property
    def repo_path(self) -> Path:
        return Path(self.repo).expanduser()

    def store_yaml(self, timeout_s: float) -> str:
        """The repo's ``feature_store.yaml``: local registry, Redis online store with socket timeouts."""
        connection = f"{self.online_store},socket_timeout={timeout_s},socket_connect_timeout={timeout_s},retry=null"
        if self.password_env:
            connection += f",password=${{{self.password_env}}}"
        return yaml.safe_dump({
            "project": self.project, "provider": "local", "registry": str((self.repo_path / "registry.db").resolve()),
            "online_store": {"type": "redis", "connection_string": connection},
            "entity_key_serialization_version": 3,
        }, sort_keys=False)

    def lookup_handler(self, fields: Sequence[MetadataField], timeout_s: float) -> EnrichmentSourceHandler:
        """Beam's Feast handler for ``fields`` of the feature view, keyed by ``device_id`` (built on the worker)."""
        from apache_beam.transforms.enrichment_handlers.feast_feature_store import (
            FeastFeatureStoreEnrichmentHandler)

        path = self.repo_path / STORE_YAML
        if not path.exists():
            raise ValueError(f"enrichment.feast.repo: no Feast repository at {self.repo_path} (no {STORE_YAML}): "
                             "load the device metadata first with `iotml features push --from FILE`")
        return FeastFeatureStoreEnrichmentHandler(
            str(path), feature_names=[f"{self.feature_view}:{field.name}" for field in fields], entity_id=ENTITY)

    def record(self, response: Mapping[str, Any]) -> dict[str, Any]:
        """The handler's answer as a record (an unknown device: every field None)."""
        return without_entity(response)


def _definitions(settings: FeastSettings, fields: Sequence[MetadataField], source: Path) -> list:
    from feast import Entity, FeatureView, Field as FeastField, FileSource, ValueType
    from feast.types import Float64, String

    device = Entity(name="device", join_keys=[ENTITY], value_type=ValueType.STRING)
    view = FeatureView(
        name=settings.feature_view, entities=[device], ttl=datetime.timedelta(0), online=True,
        schema=[FeastField(name=field.name, dtype=Float64 if field.kind == "number" else String) for field in fields],
        source=FileSource(path=str(source.resolve()), timestamp_field="event_timestamp"))
    return [device, view]


def _typed(frame: pd.DataFrame, fields: Sequence[MetadataField]) -> pd.DataFrame:
    """The columns as the view declares them: numbers as floats, dates and categories as text (empty: missing)."""
    out = pd.DataFrame({ENTITY: frame[ENTITY].astype(str)})
    for field in fields:
        column = frame[field.name]
        if field.kind == "number":
            out[field.name] = pd.to_numeric(column, errors="coerce").astype("float64")
        else:
            out[field.name] = column.map(lambda value: None if pd.isna(value) else str(value)).astype(object)
    out["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    return out


def push_metadata(settings: FeastSettings, fields: Sequence[MetadataField], frame: pd.DataFrame,
                  timeout_s: float) -> int:
    """Write the repository, apply its definitions and materialise ``frame`` (one row per device) into the online
    store; returns the rows written."""
    from feast import FeatureStore

    repo = settings.repo_path
    repo.mkdir(parents=True, exist_ok=True)
    (repo / STORE_YAML).write_text(settings.store_yaml(timeout_s))
    typed = _typed(frame, fields)
    source = repo / f"{settings.feature_view}.parquet"
    typed.to_parquet(source, index=False)
    store = FeatureStore(repo_path=str(repo))
    store.apply(_definitions(settings, fields, source))
    store.write_to_online_store(settings.feature_view, typed)
    return len(typed)
