"""What every model handler kind's settings share: which registered version to serve."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ModelSettings(BaseModel):
    """``uri``: ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a model version folder;
    ``tracking_uri``: the MLflow registry (default: the work dir's); ``watch_s``: with an alias URI, seconds between
    checks of the registry for a promotion, served without a restart (0: never; ``model_handlers.serving``). Each
    handler kind subclasses this with its own ``handler: Literal[...]`` and settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    handler: str
    uri: str = "models:/iot-anomaly@champion"
    tracking_uri: str | None = None
    watch_s: float = Field(15.0, ge=0)

    @field_validator("uri")
    @classmethod
    def _registry_uri(cls, uri: str) -> str:
        if uri.startswith("models:/"):
            ref = uri[len("models:/"):]
            if "@" in ref and all(ref.split("@", 1)) or "/" in ref and all(ref.split("/", 1)):
                return uri
            raise ValueError("expected models:/<name>@<alias> or models:/<name>/<version>")
        if not Path(uri).expanduser().is_dir():
            raise ValueError(f"not a registry URI (models:/<name>@<alias>) nor a model version folder: {uri}")
        return uri
