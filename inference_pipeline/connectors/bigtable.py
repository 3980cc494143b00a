"""``enrichment.store: bigtable``: device metadata rows in a Cloud Bigtable table (row key: the device id, one
column per metadata field in ``column_family``), read through Beam's own ``BigTableEnrichmentHandler``."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from features.metadata import ENTITY, MetadataField

if TYPE_CHECKING:
    from apache_beam.transforms.enrichment import EnrichmentSourceHandler


class BigtableSettings(BaseModel):
    """``project``, ``instance``, ``table``: where the rows are; ``column_family``: the family holding the fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Literal["bigtable"] = "bigtable"
    project: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    table: str = Field(min_length=1)
    column_family: str = Field("metadata", min_length=1)

    def lookup_handler(self, fields: Sequence[MetadataField], timeout_s: float) -> EnrichmentSourceHandler:
        from apache_beam.transforms.enrichment_handlers.bigtable import BigTableEnrichmentHandler

        return BigTableEnrichmentHandler(self.project, self.instance, self.table, row_key=ENTITY)

    def record(self, response: Mapping[str, Any]) -> dict[str, Any]:
        """The handler's answer ({family: {column: value}}) as a flat record; no row: empty."""
        return dict(response.get(self.column_family) or {})
