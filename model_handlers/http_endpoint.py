"""``model.handler: http_endpoint``: a version's model scored by a JSON REST endpoint (a model server on the line:
``mlflow models serve`` of a registered version, or any server speaking MLflow's scoring protocol or the
``{"instances": [...]}`` / ``{"predictions": [...]}`` form), on Beam's ``RemoteModelHandler``.

- **The version stays in the stream.** ``model.uri`` still names the version: the stream computes its window
  features and scales them with the version's MLTransform artifacts, and the endpoint receives the scaled feature
  rows (one request per RunInference batch of at most ``max_batch_size`` rows).
- **Same version on both sides.** Every version's pyfunc (``model_handlers.pyfunc``) answers each row with the
  ``transform_id`` of the MLTransform artifacts its model belongs to. The answer's transform becomes the output's
  model identity, so the scoring step dead-letters (``inference_error``) every batch the endpoint scored with
  another version's model; and at load (start, or a promotion the watcher picks up) a one-row probe refuses an
  endpoint that serves another version: the stream fails at start, a promotion is refused and logged. An endpoint
  whose answers cannot name their transform (``model.verify_transform: false``) is served unverified, with a warning.
- **Failures.** Timeouts, refused connections, 5xx and 429 answers raise ``EndpointUnavailable``, which Beam's
  ``RemoteModelHandler`` retries ``num_retries`` times with exponential backoff (about 5, 10, 20, 40 s, fuzzed down
  by up to half) behind its client-side adaptive throttler; what still fails, and any other answer (4xx, a body that
  is not predictions for every row), fails the batch: its events become ``inference_error`` dead letters and the
  stream goes on.
- **Answers.** ``{"predictions": [...]}`` (or a bare list): one entry per row, an object with ``raw_score`` (and
  ``anomaly_score``, ``contribution_<sensor>``, ``transform_id``: what the pyfunc returns), a number (the raw score;
  the version's threshold maps it), or, for a version of the ``mlflow`` kind, whatever its model returns, mapped by
  its ``architecture.output`` as the local ``mlflow`` kind maps it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RemoteModelHandler
from pydantic import Field, field_validator

from features.schema import FeatureBatch, feature_rows
from model_handlers.contract import ModelId, ModelOutput, error_to_score
from model_handlers.feature_batch_handler import score_batches
from model_handlers.model_version import MLFLOW_KIND, ModelVersion
from model_handlers.pyfunc import CONTRIBUTION, TRANSFORM_ID
from model_handlers.settings import ModelSettings

LOG = logging.getLogger(__name__)
RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class HttpEndpointSettings(ModelSettings):
    """``url``: the endpoint's scoring route (``http://host:5001/invocations`` for ``mlflow models serve``);
    ``request_format``: ``dataframe_split`` / ``dataframe_records`` (MLflow's scoring protocol), ``instances``
    (``{"instances": [{feature: value, ...}, ...]}``) or ``inputs`` (``{"inputs": [[values], ...]}``, the spec's
    feature order); ``timeout_s``: per request; ``num_retries``: retries of a request that timed out or got a
    5xx/429 answer, with exponential backoff; ``throttle_delay_s``: how long the client-side throttler holds a request
    when the endpoint is failing; ``min/max_batch_size``: feature rows per request, gathered from a bundle's device
    batches (a bundle's last request takes what is left: a live bundle is one request; each request costs the
    endpoint's fixed overhead, milliseconds, so few large ones); ``headers_from_env``: request
    headers whose values come from environment variables (``{"Authorization": "IOTML_ENDPOINT_AUTH"}``), so no secret
    sits in a config file; ``verify_transform``: refuse answers that do not name the transform they belong to."""

    handler: Literal["http_endpoint"] = "http_endpoint"
    url: str
    request_format: Literal["dataframe_split", "dataframe_records", "instances", "inputs"] = "dataframe_split"
    timeout_s: float = Field(10.0, gt=0)
    num_retries: int = Field(4, ge=0)
    throttle_delay_s: int = Field(5, ge=1)
    min_batch_size: int = Field(2048, ge=1)
    max_batch_size: int = Field(2048, ge=1)
    headers_from_env: dict[str, str] = {}
    verify_transform: bool = True

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s):// URL of the endpoint's scoring route, got {url!r}")
        return url


class EndpointUnavailable(ConnectionError):
    """The endpoint did not answer in time, refused the connection, or answered 5xx/429: worth retrying."""


class EndpointRefused(ValueError):
    """The endpoint answered, but not with predictions for every row (4xx, a malformed body, another version)."""


def retryable(exc: Exception) -> bool:
    return isinstance(exc, EndpointUnavailable)


def request_body(features: np.ndarray, names: Sequence[str], request_format: str) -> dict[str, Any]:
    """The JSON body for scaled feature rows in ``request_format``."""
    rows = features.tolist()
    if request_format == "dataframe_split":
        return {"dataframe_split": {"columns": list(names), "data": rows}}
    if request_format == "inputs":
        return {"inputs": rows}
    records = [dict(zip(names, row)) for row in rows]
    return {"dataframe_records" if request_format == "dataframe_records" else "instances": records}


class EndpointClient:
    """A keep-alive HTTP session to one endpoint; ``post`` raises ``EndpointUnavailable`` or ``EndpointRefused``.
    Messages name the endpoint's host, never its URL's credentials or query."""

    def __init__(self, settings: HttpEndpointSettings):
        import requests

        self._url = settings.url
        parts = urlsplit(settings.url)
        self.where = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        self._timeout = settings.timeout_s
        self._session = requests.Session()
        self._session.headers.update({"Content-Type": "application/json"})
        for header, variable in settings.headers_from_env.items():
            value = os.environ.get(variable)
            if value is None:
                raise ValueError(f"model.headers_from_env.{header}: environment variable {variable} is not set")
            self._session.headers[header] = value

    def post(self, body: dict[str, Any]) -> Any:
        import requests

        try:
            response = self._session.post(self._url, json=body, timeout=self._timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise EndpointUnavailable(f"model endpoint {self.where}: {type(exc).__name__}") from None
        if response.status_code in RETRIED_STATUS:
            raise EndpointUnavailable(f"model endpoint {self.where} answered {response.status_code}: "
                                      f"{response.text[:200]}")
        if response.status_code != 200:
            raise EndpointRefused(f"model endpoint {self.where} answered {response.status_code}: "
                                  f"{response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise EndpointRefused(f"model endpoint {self.where} answered 200 with a body that is not JSON: "
                                  f"{response.text[:200]!r}") from None


class AnswerMap:
    """An endpoint's answer for n rows -> the model output contract, for one version."""

    def __init__(self, version: ModelVersion, verify_transform: bool):
        self._version = version
        self._verify = verify_transform
        self._sensors = version.feature_spec.channels
        self._own = None
        if version.architecture.get("device_index") is not None:
            raise ValueError(f"model.uri: {version.path} holds a model per device, which scores each row with its "
                             f"device's own model: serve it in the pipeline (model.handler: torch), not at an endpoint")
        if version.architecture.get("kind") == MLFLOW_KIND:
            from model_handlers.mlflow_handler import output_map

            self._own = output_map(version)

    def transform_of(self, predictions: list, body: Any) -> str:
        """The transform the answer names (one for the whole answer), or the version's own when not verifying."""
        named = {row.get(TRANSFORM_ID) for row in predictions if isinstance(row, dict)}
        if isinstance(body, dict) and body.get(TRANSFORM_ID):
            named.add(body[TRANSFORM_ID])
        named.discard(None)
        if len(named) == 1:
            return str(named.pop())
        if len(named) > 1:
            raise EndpointRefused(f"model endpoint answered rows of several transforms {sorted(named)}")
        if self._verify:
            raise EndpointRefused("model endpoint's answer names no transform_id, so it cannot be checked against "
                                  "the version that scaled the rows; serve a version registered by iotml (its pyfunc "
                                  "names it), or set model.verify_transform: false")
        return self._version.transform_id

    def of(self, body: Any, rows: int) -> ModelOutput:
        predictions = body.get("predictions") if isinstance(body, dict) else body
        if not isinstance(predictions, list) or len(predictions) != rows:
            found = f"{len(predictions)} predictions" if isinstance(predictions, list) else f"{str(body)[:120]!r}"
            raise EndpointRefused(f"model endpoint answered {found} for {rows} rows")
        model_id = ModelId(self._version.name, self._version.version, self.transform_of(predictions, body))
        try:
            if self._own is not None:
                return self._own.of(_values(predictions), rows, model_id)
            return self._scores(predictions, model_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise EndpointRefused(f"model endpoint's predictions do not fit the version's output: {exc}") from None

    def _scores(self, predictions: list, model_id: ModelId) -> ModelOutput:
        if not isinstance(predictions[0], dict):
            raw = _values(predictions)[:, 0]
            return ModelOutput(raw, error_to_score(np.maximum(raw, 0.0), self._version.threshold), model_id)
        raw = np.array([row["raw_score"] for row in predictions], dtype=np.float64)
        anomaly = (np.array([row["anomaly_score"] for row in predictions], dtype=np.float64)
                   if "anomaly_score" in predictions[0] else error_to_score(np.maximum(raw, 0.0),
                                                                             self._version.threshold))
        columns = [CONTRIBUTION + name for name in self._sensors]
        if not all(column in predictions[0] for column in columns):
            return ModelOutput(raw, anomaly, model_id)
        shares = np.array([[row[column] for column in columns] for row in predictions], dtype=np.float64)
        return ModelOutput(raw, anomaly, model_id, sensor_names=self._sensors, sensor_contributions=shares)


def _values(predictions: list) -> np.ndarray:
    """Predictions as rows of numbers (objects: their numeric fields in order, the transform left out)."""
    if isinstance(predictions[0], dict):
        return np.array([[v for k, v in row.items() if k != TRANSFORM_ID] for row in predictions], dtype=np.float64)
    return np.asarray(predictions, dtype=np.float64)


def check_served(version: ModelVersion, probed: ModelOutput, where: str, verified: bool) -> None:
    """Refuse (EndpointRefused) an endpoint whose probe answer came from another version's model; log what serves."""
    if probed.model.transform_id != version.transform_id:
        raise EndpointRefused(f"model endpoint {where} serves the model of transform {probed.model.transform_id}, "
                              f"not {version.name}/{version.version}'s ({version.transform_id}): deploy that version "
                              f"there, or point model.uri at the version it serves")
    if verified:
        LOG.info("model endpoint %s serves %s/%s (transform %s)", where, version.name, version.version,
                 version.transform_id)
    else:
        LOG.warning("model endpoint %s is not checked against %s/%s: model.verify_transform is false", where,
                    version.name, version.version)


class HttpEndpointHandler(RemoteModelHandler[FeatureBatch, PredictionResult, EndpointClient]):
    """Scores FeatureBatches through a JSON REST endpoint: one request per RunInference batch, retried with backoff
    and throttled client-side by Beam's ``RemoteModelHandler``."""

    def __init__(self, settings: HttpEndpointSettings, version: ModelVersion):
        RemoteModelHandler.__init__(self, namespace="iotml_http_endpoint", num_retries=settings.num_retries,
                                    throttle_delay_secs=settings.throttle_delay_s, retry_filter=retryable)
        ModelHandler.__init__(self, min_batch_size=settings.min_batch_size, max_batch_size=settings.max_batch_size,
                              element_size_fn=feature_rows)
        self._settings = settings
        self._version = version
        self._names = version.feature_spec.feature_names
        self._answers = AnswerMap(version, settings.verify_transform)

    def create_client(self) -> EndpointClient:
        """A session to the endpoint, after a one-row probe: an endpoint serving another version's model refuses the
        load (EndpointRefused); one not answering yet is left to the batches' retries."""
        client = EndpointClient(self._settings)
        probe = np.zeros((1, len(self._names)), dtype=np.float32)
        try:
            output = self._answers.of(client.post(request_body(probe, self._names, self._settings.request_format)), 1)
        except EndpointUnavailable as exc:
            LOG.warning("%s; batches will retry it", exc)
            return client
        check_served(self._version, output, client.where, self._settings.verify_transform)
        return client

    def request(self, batch: Sequence[FeatureBatch], model: EndpointClient,
                inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        fmt = self._settings.request_format
        return score_batches(batch, lambda rows: self._answers.of(model.post(request_body(rows, self._names, fmt)),
                                                                  len(rows)))

    def get_num_bytes(self, batch: Sequence[FeatureBatch]) -> int:
        return sum(b.features.nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return "iotml_http_endpoint"


def http_endpoint_handler(settings: HttpEndpointSettings, version: ModelVersion) -> HttpEndpointHandler:
    return HttpEndpointHandler(settings, version)
