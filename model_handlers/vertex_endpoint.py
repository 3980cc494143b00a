"""``model.handler: vertex_endpoint``: a version's model scored by a Vertex AI endpoint, through Beam's own
``VertexAIModelHandlerJSON`` (its endpoint lookup, retries of 5xx/429 answers with backoff and client-side
throttling, private endpoints over a VPC network).

As with ``http_endpoint``, the stream computes the features and applies the version's MLTransform (``model.uri``),
and the endpoint receives the scaled rows as ``{"instances": [{feature: value, ...}, ...]}``: what the serving
container ``mlflow models build-docker`` builds for a version answers (``iotml vertex upload`` / ``deploy`` put it
there). The answer's ``transform_id`` is checked the same way (``model_handlers.http_endpoint``): a one-row probe at
load refuses an endpoint serving another version, and a batch answered by another version's model is dead-lettered.

Beam's handler calls ``aiplatform.init`` and looks the endpoint up in its constructor (when the pipeline is built)
and again in each worker (``create_client``); this subclass points the client at ``model.api_endpoint`` and its
credentials in both places (a worker process starts with aiplatform's defaults), and takes feature batches rather
than JSON instances. Verified here against a local stand-in of the Vertex REST API (``tests/vertex_stand_in.py``);
IAM, quotas, networking and the real serving container need a real project.

The handler itself (``vertex_endpoint_handler``) is imported when a stream serves this kind: Beam's Vertex module
imports the Vertex AI client, seconds of start-up every other command would pay.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from model_handlers.model_version import ModelVersion
from model_handlers.settings import ModelSettings


class VertexEndpointSettings(ModelSettings):
    """``endpoint_id``: the Vertex AI endpoint (numeric id or full resource name) in the project, location and API
    host of ``model.vertex`` (required); ``private``: a private endpoint reached over ``model.vertex.network`` (the
    Dataflow job's network must match); ``min/max_batch_size``: feature rows per request (a public endpoint takes
    at most 1.5 MB a request: about 1,000 rows of 40 features); ``num_retries``: retries of 5xx/429 answers and lost
    connections; ``verify_transform``: as for ``http_endpoint``."""

    handler: Literal["vertex_endpoint"] = "vertex_endpoint"
    endpoint_id: str
    private: bool = False
    min_batch_size: int = Field(1000, ge=1)
    max_batch_size: int = Field(1000, ge=1)
    num_retries: int = Field(4, ge=0)
    verify_transform: bool = True

    @model_validator(mode="after")
    def _has_a_project(self) -> VertexEndpointSettings:
        if self.vertex is None:
            raise ValueError("vertex: the endpoint's project and location are required (model.vertex.project, "
                             "model.vertex.location)")
        if self.private and not self.vertex.network:
            raise ValueError("vertex.network: a private endpoint is reached over a VPC network; set it")
        return self


def vertex_endpoint_handler(settings: VertexEndpointSettings, version: ModelVersion):
    from model_handlers.vertex_endpoint_handler import VertexEndpointHandler

    return VertexEndpointHandler(settings, version)
