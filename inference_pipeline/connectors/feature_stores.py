"""The ``enrichment`` config section: which store serves device metadata (``store``, by its ``store`` tag: Feast,
Bigtable or the Vertex AI Feature Store, each a connector of its own) and how the stream protects itself from it
(``steps.enrich``)."""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Field

from inference_pipeline.connectors.bigtable import BigtableSettings
from inference_pipeline.connectors.feast import FeastSettings
from inference_pipeline.connectors.vertex_feature_store import VertexFeatureStoreSettings

StoreSettings = Annotated[Union[FeastSettings, BigtableSettings, VertexFeatureStoreSettings],
                          Field(discriminator="store")]


class RetrySettings(BaseModel):
    """``attempts`` per lookup, waiting ``initial_s`` doubling up to ``max_s`` between them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(3, ge=1, le=10)
    initial_s: float = Field(0.05, gt=0)
    max_s: float = Field(0.5, gt=0)


class EnrichmentSettings(BaseModel):
    """Where device metadata comes from (``store`` and its section) and how the stream protects itself from the
    store: ``timeout_s`` per request, ``retry``, ``cooldown_s`` after a failed lookup, ``cache_ttl_s`` per device,
    ``cache_devices`` the most devices cached per worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: StoreSettings = FeastSettings()
    timeout_s: float = Field(0.5, gt=0, le=60)
    retry: RetrySettings = RetrySettings()
    cooldown_s: float = Field(5.0, ge=0)
    cache_ttl_s: float = Field(300.0, ge=0)
    cache_devices: int = Field(100_000, ge=1)
