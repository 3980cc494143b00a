"""``model.handler: http_endpoint`` against a real model server (``mlflow models serve`` of the trained fixture's
registered champion), and through a scripted proxy in front of it for the answers a real server gives only when it
is failing (5xx, 429, 4xx, a short body)."""
import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
from apache_beam import pvalue

from features.schema import EventBatch, FeatureBatch
from inference_pipeline.config import load_config
from inference_pipeline.steps.score import _ScoreFn
from model_handlers.http_endpoint import EndpointRefused, EndpointUnavailable, HttpEndpointHandler, \
    HttpEndpointSettings
from model_handlers.torch_handler import TorchAnomalyHandler
from tests.conftest import REPO
from tests.model_servers import free_port


def feature_batches(version, sizes, seed=0, scaled_by=None):
    rng = np.random.default_rng(seed)
    dim = len(version.feature_spec.feature_names)
    batches = []
    for n in sizes:
        events = EventBatch("d", np.arange(n).astype(str).astype(object), np.arange(n, dtype=float),
                            np.zeros((n, 1)), np.zeros(n))
        batches.append(FeatureBatch(events, rng.normal(size=(n, dim)).astype(np.float32), np.full(n, 30),
                                    scaled_by=scaled_by or version.transform_id))
    return batches


def endpoint(version, url, **settings):
    return HttpEndpointHandler(HttpEndpointSettings(uri=str(version.path), url=url, **settings), version)


class ScriptedProxy:
    """A loopback proxy in front of the model server: each request takes the next scripted answer (an HTTP status, or
    ``"pass"`` to forward it; ``"pass"`` once the script is used up) and is recorded with its headers."""

    def __init__(self, upstream: str, script: list):
        self.script, self.seen = list(script), []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.seen.append(dict(self.headers))
                step = proxy.script.pop(0) if proxy.script else "pass"
                if step == "pass":
                    answer = requests.post(upstream, data=body, headers={"Content-Type": "application/json"})
                    status, payload = answer.status_code, answer.content
                elif step == "short":
                    status, payload = 200, json.dumps({"predictions": [{"raw_score": 1.0}]}).encode()
                else:
                    status, payload = step, b'{"error_code": "scripted"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/invocations"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(served_model):
    proxies = []

    def make(script):
        proxies.append(ScriptedProxy(served_model.url, script))
        return proxies[-1]

    yield make
    for made in proxies:
        made.close()


@pytest.mark.parametrize("request_format", ["dataframe_split", "dataframe_records", "instances"])
def test_the_endpoints_predictions_equal_the_local_handlers(trained, served_model, request_format):
    version = trained.version
    batches = feature_batches(version, (3, 1, 5, 40))
    handler = endpoint(version, served_model.url, request_format=request_format)
    remote = list(handler.run_inference(batches, handler.load_model()))
    local_handler = TorchAnomalyHandler(version, device="cpu")
    local = list(local_handler.run_inference(batches, local_handler.load_model()))
    assert [r.example for r in remote] == batches and [len(r.inference) for r in remote] == [3, 1, 5, 40]
    for far, near in zip(remote, local):
        assert far.model_id == near.model_id and far.inference.model == near.inference.model
        for field in ("raw_score", "anomaly_score", "sensor_contributions"):
            np.testing.assert_allclose(getattr(far.inference, field), getattr(near.inference, field), rtol=1e-6,
                                       atol=1e-9, err_msg=field)
        assert far.inference.sensor_names == near.inference.sensor_names


def test_an_endpoint_serving_another_version_is_refused_at_load(trained, served_model):
    other = dataclasses.replace(trained.version, meta={**trained.version.meta, "transform_id": "0123456789abcdef"})
    refusal = r"serves the model of transform \w+, not iot-anomaly/1.s \(0123456789abcdef\)"
    with pytest.raises(EndpointRefused, match=refusal):
        endpoint(other, served_model.url).load_model()


def test_a_batch_scored_by_another_versions_model_becomes_dead_letters(trained, served_model):
    """The endpoint names the transform its model belongs to; a batch the stream scaled with other artifacts is never
    scored (the endpoint was redeployed with another version mid-stream, say)."""
    version = trained.version
    handler = endpoint(version, served_model.url)
    [result] = handler.run_inference(feature_batches(version, (4,), scaled_by="0123456789abcdef"),
                                     handler.load_model())
    assert result.inference.model.transform_id == version.transform_id
    out = list(_ScoreFn(0.5, version.feature_spec.window, version.feature_spec.sensors).process(("d", result)))
    assert len(out) == 4 and all(isinstance(o, pvalue.TaggedOutput) for o in out)
    assert {o.value.reason for o in out} == {"inference_error"}
    assert "expects features scaled by its transform" in out[0].value.detail


def test_5xx_answers_are_retried_with_backoff_then_scored(trained, proxy):
    version = trained.version
    scripted = proxy(["pass", 503])
    handler = endpoint(version, scripted.url, num_retries=2)
    [result] = handler.run_inference(feature_batches(version, (6,)), handler.load_model())
    assert len(result.inference) == 6 and len(scripted.seen) == 3  # the probe, the 503, the retry


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_timeouts_overload_and_server_errors_are_worth_a_retry(trained, proxy, status):
    handler = endpoint(trained.version, proxy([status, status]).url)
    client = handler.create_client()  # the probe's failure is left to the batches' retries
    with pytest.raises(EndpointUnavailable, match=f"answered {status}") as failed:
        client.post({"inputs": [[0.0]]})
    assert handler.retry_filter(failed.value)


def test_a_client_error_fails_the_batch_at_once_without_retries(trained, proxy):
    scripted = proxy(["pass", 400])
    handler = endpoint(trained.version, scripted.url, num_retries=3)
    with pytest.raises(EndpointRefused, match="answered 400"):
        handler.run_inference(feature_batches(trained.version, (2,)), handler.load_model())
    assert len(scripted.seen) == 2


def test_an_answer_short_of_rows_fails_the_batch(trained, proxy):
    handler = endpoint(trained.version, proxy(["pass", "short"]).url)
    with pytest.raises(EndpointRefused, match="1 predictions for 3 rows"):
        handler.run_inference(feature_batches(trained.version, (3,)), handler.load_model())


def test_an_endpoint_that_stays_down_fails_the_batch_after_its_retries(trained):
    handler = endpoint(trained.version, f"http://127.0.0.1:{free_port()}/invocations", num_retries=0,
                       timeout_s=1)
    client = handler.load_model()  # down at start: left to the batches' retries, not a failed start
    with pytest.raises(EndpointUnavailable, match="ConnectionError"):
        handler.run_inference(feature_batches(trained.version, (2,)), client)


def test_request_headers_come_from_the_environment(trained, proxy, monkeypatch):
    scripted = proxy([])
    settings = {"headers_from_env": {"Authorization": "IOTML_TEST_ENDPOINT_AUTH"}}
    with pytest.raises(ValueError, match="model.headers_from_env.Authorization: .*IOTML_TEST_ENDPOINT_AUTH"):
        endpoint(trained.version, scripted.url, **settings).load_model()
    monkeypatch.setenv("IOTML_TEST_ENDPOINT_AUTH", "Bearer s3cret")
    endpoint(trained.version, scripted.url, **settings).load_model()
    assert scripted.seen[-1]["Authorization"] == "Bearer s3cret"


def test_config_names_a_bad_endpoint_url(trained):
    with pytest.raises(ValueError, match=r"model.url: .*expected an http\(s\):// URL"):
        load_config(REPO / "configs" / "local.yaml", {"model": {"handler": "http_endpoint", "url": "ftp://x",
                                                                 "uri": str(trained.version.path)}})
