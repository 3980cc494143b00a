"""The Vertex AI endpoint handler (``model_handlers.vertex_endpoint``): Beam's ``VertexAIModelHandlerJSON`` taking
feature batches, pointed at ``model.api_endpoint`` in every process, its answers checked like ``http_endpoint``'s."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.vertex_ai_inference import VertexAIModelHandlerJSON, _retry_on_appropriate_gcp_error

from features.schema import FeatureBatch, feature_rows
from model_handlers.feature_batch_handler import score_batches
from model_handlers.http_endpoint import AnswerMap, EndpointUnavailable, check_served, request_body
from model_handlers.model_version import ModelVersion
from model_handlers.vertex import init_aiplatform
from model_handlers.vertex_endpoint import VertexEndpointSettings


def retryable(exc: Exception) -> bool:
    """Beam's GCP filter (5xx, 429), and a connection lost or timed out before any answer."""
    import requests

    return _retry_on_appropriate_gcp_error(exc) or isinstance(
        exc, (EndpointUnavailable, requests.ConnectionError, requests.Timeout))


class VertexEndpointHandler(VertexAIModelHandlerJSON):
    """Scores FeatureBatches through a Vertex AI endpoint: one predict request per RunInference batch."""

    def __init__(self, settings: VertexEndpointSettings, version: ModelVersion):
        self._settings = settings
        self._version = version
        self._names = version.feature_spec.feature_names
        self._answers = AnswerMap(version, settings.verify_transform)
        init_aiplatform(settings.vertex)
        super().__init__(endpoint_id=settings.endpoint_id, project=settings.vertex.project,
                         location=settings.vertex.location, network=settings.vertex.network, private=settings.private,
                         min_batch_size=settings.min_batch_size, max_batch_size=settings.max_batch_size,
                         element_size_fn=feature_rows, num_retries=settings.num_retries)
        self.retry_filter = retryable

    def create_client(self) -> Any:
        """The endpoint, looked up from this process (aiplatform pointed here first), after a one-row probe that
        refuses an endpoint serving another version's model."""
        init_aiplatform(self._settings.vertex)
        endpoint = super().create_client()
        probe = request_body(np.zeros((1, len(self._names)), dtype=np.float32), self._names, "instances")["instances"]
        output = self._answers.of([r.inference for r in super().request(probe, endpoint)], 1)
        check_served(self._version, output, f"vertex endpoint {self._settings.endpoint_id}",
                     self._settings.verify_transform)
        return endpoint

    def request(self, batch: Sequence[FeatureBatch], model: Any,
                inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        def score(rows):
            instances = request_body(rows, self._names, "instances")["instances"]
            answers = VertexAIModelHandlerJSON.request(self, instances, model, inference_args)
            return self._answers.of([r.inference for r in answers], len(rows))

        return score_batches(batch, score)

    def get_num_bytes(self, batch: Sequence[FeatureBatch]) -> int:
        return sum(b.features.nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return "iotml_vertex_endpoint"
