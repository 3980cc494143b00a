"""``model.handler: vertex_endpoint`` through the real ``google-cloud-aiplatform`` client and Beam's
``VertexAIModelHandlerJSON``, against the local Vertex AI stand-in; the deployed model's predictions come from a real
``mlflow models serve`` of the version (what the version's serving container runs), forwarded as Vertex forwards
``{"instances"}`` to a custom container's predict route."""
import dataclasses

import numpy as np
import pytest
from google.cloud import aiplatform
from google.cloud.aiplatform import initializer

from model_handlers.http_endpoint import EndpointRefused
from model_handlers.torch_handler import TorchAnomalyHandler
from model_handlers.vertex_endpoint import VertexEndpointSettings, vertex_endpoint_handler
from tests.model_handlers.test_http_endpoint import feature_batches

def settings(stand_in, endpoint, version, **more):
    return VertexEndpointSettings(uri=str(version.path), endpoint_id=endpoint.name, **more,
                                  vertex=stand_in.model_settings())


def test_vertex_endpoint_predictions_equal_the_local_handlers(trained, vertex_deployment):
    stand_in, endpoint = vertex_deployment
    version = trained.version
    handler = vertex_endpoint_handler(settings(stand_in, endpoint, version), version)
    initializer.global_config.__init__()  # as in a fresh worker process: no aiplatform.init there yet
    batches = feature_batches(version, (3, 1, 5, 40))
    remote = list(handler.run_inference(batches, handler.load_model()))
    local_handler = TorchAnomalyHandler(version, device="cpu")
    local = list(local_handler.run_inference(batches, local_handler.load_model()))
    for far, near in zip(remote, local):
        assert far.inference.model == near.inference.model
        for field in ("raw_score", "anomaly_score", "sensor_contributions"):
            np.testing.assert_allclose(getattr(far.inference, field), getattr(near.inference, field), rtol=1e-6,
                                       atol=1e-9, err_msg=field)
    predicts = stand_in.requests_to(":predict", "POST")
    assert len(predicts) == 1 + 1  # the probe at load, then one request for the RunInference batch
    assert len(predicts[-1].body["instances"]) == 49
    assert set(predicts[-1].body["instances"][0]) == set(version.feature_spec.feature_names)


def test_a_vertex_endpoint_serving_another_version_is_refused_at_load(trained, vertex_deployment):
    stand_in, endpoint = vertex_deployment
    other = dataclasses.replace(trained.version, meta={**trained.version.meta, "transform_id": "0123456789abcdef"})
    handler = vertex_endpoint_handler(settings(stand_in, endpoint, other), other)
    with pytest.raises(EndpointRefused, match="vertex endpoint .* serves the model of transform"):
        handler.load_model()


def test_overload_answers_are_retried(trained, vertex_deployment):
    stand_in, endpoint = vertex_deployment
    handler = vertex_endpoint_handler(settings(stand_in, endpoint, trained.version, num_retries=2), trained.version)
    client = handler.load_model()
    stand_in.fail_next(":predict", code=429, status="RESOURCE_EXHAUSTED")
    [result] = handler.run_inference(feature_batches(trained.version, (4,)), client)
    assert len(result.inference) == 4 and len(stand_in.requests_to(":predict", "POST")) == 3


def test_an_endpoint_with_nothing_deployed_fails_when_the_pipeline_is_built(trained, vertex_deployment):
    stand_in, _ = vertex_deployment
    empty = aiplatform.Endpoint.create(display_name="empty")
    with pytest.raises(ValueError, match="no models deployed"):
        vertex_endpoint_handler(settings(stand_in, empty, trained.version), trained.version)
