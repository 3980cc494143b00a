"""``enrichment.store: vertex_feature_store``: device metadata in a Vertex AI Feature Store feature view (Bigtable
online serving; entity id: the device id), read through Beam's own ``VertexAIFeatureStoreEnrichmentHandler``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from features.metadata import ENTITY, MetadataField, without_entity

if TYPE_CHECKING:
    from apache_beam.transforms.enrichment import EnrichmentSourceHandler


class VertexFeatureStoreSettings(BaseModel):
    """``project``, ``location``, ``feature_store``, ``feature_view``: the online store's feature view;
    ``api_endpoint``: its regional endpoint (default ``<location>-aiplatform.googleapis.com``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Literal["vertex_feature_store"] = "vertex_feature_store"
    project: str = Field(min_length=1)
    location: str = Field(min_length=1)
    feature_store: str = Field(min_length=1)
    feature_view: str = Field(min_length=1)
    api_endpoint: str | None = None

    def lookup_handler(self, fields: Sequence[MetadataField], timeout_s: float) -> EnrichmentSourceHandler:
        from apache_beam.transforms.enrichment_handlers.vertex_ai_feature_store import (
            VertexAIFeatureStoreEnrichmentHandler)

        return VertexAIFeatureStoreEnrichmentHandler(
            self.project, self.location, self.api_endpoint or f"{self.location}-aiplatform.googleapis.com",
            self.feature_store, self.feature_view, row_key=ENTITY)

    def record(self, response: Mapping[str, Any]) -> dict[str, Any]:
        return without_entity(response)
