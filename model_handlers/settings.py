"""What every model handler kind's settings share: which registered version to serve, and per device group."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model_handlers.vertex import VertexProject, is_vertex_uri, parse_vertex_uri

DEFAULT_GROUP = "default"


def model_uri(uri: str) -> str:
    """A registry reference (MLflow: ``models:/<name>@<alias>``, ``models:/<name>/<version>``; Vertex AI:
    ``vertex:<model>@<alias>``, ``vertex:<model>/<version id>``) or a version folder."""
    if is_vertex_uri(uri):
        parse_vertex_uri(uri)
        return uri
    if uri.startswith("models:/"):
        ref = uri[len("models:/"):]
        if "@" in ref and all(ref.split("@", 1)) or "/" in ref and all(ref.split("/", 1)):
            return uri
        raise ValueError("expected models:/<name>@<alias> or models:/<name>/<version>")
    if not Path(uri).expanduser().is_dir():
        raise ValueError(f"not a registry URI (models:/<name>@<alias>) nor a model version folder: {uri}")
    return uri


class DeviceGroup(BaseModel):
    """``devices``: device ids or glob patterns (``press-b-*``); ``uri``: the model serving them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: tuple[str, ...] = Field(min_length=1)
    uri: str

    _uri = field_validator("uri")(model_uri)


class ModelSettings(BaseModel):
    """``uri``: ``models:/<name>@<alias>``, ``models:/<name>/<version>`` (MLflow), ``vertex:<model>@<alias>``,
    ``vertex:<model>/<version id>`` (Vertex AI Model Registry) or a model version folder; ``tracking_uri``: the
    MLflow registry (default: the work dir's); ``vertex``: the Vertex AI project and location of ``vertex:``
    references; ``watch_s``: with an alias URI, seconds between
    checks of the registry for a promotion, served without a restart (0: never; ``model_handlers.serving``);
    ``groups``: device groups served by their own models (``model_handlers.device_groups``; the rest: ``uri``), at
    most ``max_models_per_worker_hint`` group models loaded per worker; ``shadow``: a challenger scoring every event
    beside the champion, recorded but raising no alerts; ``min_shadow_s``: how long a version must have scored in
    shadow before ``iotml models promote`` moves an alias to it (0: no rule). Each handler kind subclasses this with
    its own ``handler: Literal[...]`` and settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    handler: str
    uri: str = "models:/iot-anomaly@champion"
    tracking_uri: str | None = None
    vertex: VertexProject | None = None
    watch_s: float = Field(15.0, ge=0)
    groups: dict[str, DeviceGroup] = {}
    max_models_per_worker_hint: int | None = Field(None, ge=1)
    shadow: str | None = None
    min_shadow_s: float = Field(0.0, ge=0)

    _uri = field_validator("uri")(model_uri)
    _shadow = field_validator("shadow")(lambda uri: None if uri is None else model_uri(uri))

    @model_validator(mode="after")
    def _batch_sizes_in_order(self) -> ModelSettings:
        """A kind batching rows (``min_batch_size``, ``max_batch_size``) needs min <= max (Beam's BatchElements
        would fail only when the stream starts)."""
        low, high = getattr(self, "min_batch_size", None), getattr(self, "max_batch_size", None)
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_batch_size ({low}) must not exceed max_batch_size ({high})")
        return self

    @field_validator("groups")
    @classmethod
    def _not_default(cls, groups: dict[str, DeviceGroup]) -> dict[str, DeviceGroup]:
        if DEFAULT_GROUP in groups:
            raise ValueError(f"'{DEFAULT_GROUP}' is the group of every device no other group names: model.uri "
                             f"serves it")
        return groups
