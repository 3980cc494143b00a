"""A local HTTP stand-in for the Vertex AI REST API and the Cloud Storage JSON API, driven by the real clients.

One ``ThreadingHTTPServer`` on a free loopback port serves both APIs at ``stand_in.url`` (``http://127.0.0.1:PORT``):

- aiplatform: ``aiplatform.init(project=..., location=..., api_endpoint=stand_in.url, api_transport="rest",
  credentials=AnonymousCredentials())``; the ``http://`` scheme makes the REST transport speak plain HTTP.
- google-cloud-storage: ``STORAGE_EMULATOR_HOST=stand_in.url`` before a ``storage.Client`` is made.

``vertex_stand_in()`` does both for a ``with`` block. Long-running operations answer not-done and are done on the
first poll. Predictions come from callables ``fn(instances: list, parameters) -> list``: ``serve(endpoint, fn)`` for
a whole endpoint, else the traffic split picks a deployed model (smooth weighted round robin: a 90/10 split sends
exactly 9 of every 10 requests to the first) and ``register_predictor(model, fn)`` for that version answers.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import google_crc32c
from apache_beam.ml.inference.vertex_ai_inference import VertexAIModelHandlerJSON
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from google.cloud.aiplatform import initializer
from google.cloud.aiplatform_v1.types import AcceleratorType

Predictor = Callable[[list, Any], list]

PROJECT_NUMBER = "123456789012"
_LOCATION = r"/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/:]+)"
_ID = r"(?P<id>[^/:]+)"
_ACCELERATOR_NAMES = {int(member): member.name for member in AcceleratorType}


class ApiError(Exception):
    """An error answer: HTTP status, google.rpc status name and message."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


@dataclasses.dataclass
class RecordedRequest:
    """One request the stand-in received. ``path`` is percent-decoded; ``body`` is the parsed JSON body (for a
    multipart upload, its JSON metadata part), or None. Enum fields arrive as integers (the REST transport sends
    ``enum-encoding=int``)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes


@dataclasses.dataclass
class StoredObject:
    """An object in the in-memory Cloud Storage."""

    bucket: str
    name: str
    data: bytes
    content_type: str
    generation: int
    metadata: dict[str, Any]

    def resource(self) -> dict[str, Any]:
        crc = base64.b64encode(google_crc32c.Checksum(self.data).digest()).decode()
        md5 = base64.b64encode(hashlib.md5(self.data).digest()).decode()
        return {
            **self.metadata,
            "kind": "storage#object",
            "id": f"{self.bucket}/{self.name}/{self.generation}",
            "bucket": self.bucket,
            "name": self.name,
            "size": str(len(self.data)),
            "contentType": self.content_type,
            "generation": str(self.generation),
            "metageneration": "1",
            "crc32c": crc,
            "md5Hash": md5,
            "storageClass": "STANDARD",
            "timeCreated": _now(),
            "updated": _now(),
        }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _model_key(name: str) -> str:
    """``projects/p/locations/l/models/ID[@v]`` or ``ID[@v]`` -> ``ID[@v]``."""
    return name.rsplit("/models/", 1)[-1]


def _parse_filter(expression: str) -> list[tuple[str, str]]:
    """``display_name="a" AND labels.k=v`` -> ``[("display_name", "a"), ("labels.k", "v")]``."""
    terms = []
    for term in re.split(r"\s+AND\s+", expression.strip(), flags=re.IGNORECASE) if expression.strip() else []:
        match = re.fullmatch(r'\s*(display_name|labels\.[\w-]+)\s*=\s*"?([^"]*)"?\s*', term)
        if not match:
            raise ApiError(400, "INVALID_ARGUMENT", f"unsupported filter term: {term!r}")
        terms.append((match.group(1), match.group(2)))
    return terms


def _matches(resource: dict[str, Any], terms: list[tuple[str, str]]) -> bool:
    for key, value in terms:
        actual = resource.get("displayName") if key == "display_name" else resource.get("labels", {}).get(key[7:])
        if actual != value:
            return False
    return True


@dataclasses.dataclass
class _Model:
    project: str
    location: str
    model_id: str
    versions: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/models/{self.model_id}"

    def version(self, version_or_alias: str | None) -> dict[str, Any]:
        wanted = version_or_alias or "default"
        for version in self.versions.values():
            if version["versionId"] == wanted or wanted in version["versionAliases"]:
                return version
        raise ApiError(404, "NOT_FOUND", f"model {self.name}@{wanted} not found")

    def assign_aliases(self, version: dict[str, Any], aliases: list[str]) -> None:
        """Adds ``aliases`` to ``version`` (moving each from the version holding it); ``-alias`` removes one."""
        for alias in aliases:
            if alias.startswith("-"):
                if alias[1:] == "default":
                    raise ApiError(400, "INVALID_ARGUMENT", "the default alias cannot be removed")
                if alias[1:] in version["versionAliases"]:
                    version["versionAliases"].remove(alias[1:])
                continue
            for other in self.versions.values():
                if other is not version and alias in other["versionAliases"]:
                    other["versionAliases"].remove(alias)
            if alias not in version["versionAliases"]:
                version["versionAliases"].append(alias)
        version["versionUpdateTime"] = version["updateTime"] = _now()


class VertexStandIn:
    """The stand-in server and its state. Use as a context manager, or call ``start()``/``stop()``.

    Inspect ``requests`` (every request, in order) or ``requests_to(":deployModel")``; staged files with
    ``objects`` (bucket -> name -> StoredObject), ``read("gs://b/o")`` or ``files_under("gs://b/prefix")``; Vertex
    resources with ``model(...)`` / ``endpoint(...)``.
    """

    def __init__(self, project: str = "test-project", location: str = "us-central1", operation_polls: int = 1) -> None:
        self.project, self.location = project, location
        self.operation_polls = operation_polls
        self.requests: list[RecordedRequest] = []
        self.objects: dict[str, dict[str, StoredObject]] = {}
        self.buckets: dict[str, dict[str, Any]] = {}
        self.models: dict[str, _Model] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self._operations: dict[str, dict[str, Any]] = {}
        self._resumable: dict[str, dict[str, Any]] = {}
        self._predictors: dict[str, Predictor] = {}
        self._endpoint_predictors: dict[str, Predictor] = {}
        self._round_robin: dict[str, dict[str, int]] = {}
        self._failures: list[dict[str, Any]] = []
        self._ids = {kind: itertools.count(base) for kind, base in
                     (("model", 1001), ("endpoint", 2001), ("deployed", 3001), ("operation", 9001))}
        self._generation = itertools.count(1)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle and client configuration -----

    def start(self) -> VertexStandIn:
        handler = type("Handler", (_Handler,), {"stand_in": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="vertex-stand-in",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> VertexStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the stand-in is not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the ``api_endpoint`` for aiplatform and the ``STORAGE_EMULATOR_HOST``."""
        return f"http://127.0.0.1:{self.port}"

    def model_settings(self, staging_bucket: str = "gs://stage-bucket") -> dict[str, str]:
        """``model.vertex`` (``VertexProject``) pointing at the stand-in."""
        return {"project": self.project, "location": self.location, "api_endpoint": self.url,
                "credentials": "anonymous", "staging_bucket": staging_bucket}

    def init_aiplatform(self, **kwargs: Any) -> None:
        """``aiplatform.init`` pointed at the stand-in (REST transport, anonymous credentials); kwargs pass through
        (e.g. ``staging_bucket``)."""
        aiplatform.init(project=kwargs.pop("project", self.project), location=kwargs.pop("location", self.location),
                        api_endpoint=self.url, credentials=AnonymousCredentials(), api_transport="rest", **kwargs)

    @contextlib.contextmanager
    def storage_env(self) -> Iterator[None]:
        """Sets ``STORAGE_EMULATOR_HOST`` to the stand-in for the block (storage clients made inside use it)."""
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = self.url
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous

    # ----- predictors, faults, inspection -----

    def register_predictor(self, model: str, fn: Predictor) -> None:
        """Answers predicts routed to ``model``: ``ID@version``, ``ID@alias`` (resolved at predict time) or ``ID``
        (any version), each also as a full ``projects/.../models/...`` name."""
        self._predictors[_model_key(model)] = fn

    def serve(self, endpoint: str, fn: Predictor) -> None:
        """Answers every predict on ``endpoint`` (ID or full name) with ``fn``, whatever its traffic split."""
        self._endpoint_predictors[endpoint.rsplit("/", 1)[-1]] = fn

    def fail_next(self, path_suffix: str, code: int = 503, times: int = 1, status: str = "UNAVAILABLE") -> None:
        """The next ``times`` requests whose path ends with ``path_suffix`` get an error ``code``."""
        self._failures.append({"suffix": path_suffix, "code": code, "status": status, "left": times})

    def requests_to(self, path_suffix: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose decoded path ends with ``path_suffix`` (and with ``method``, if given)."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith(path_suffix) and method in (None, r.method)]

    def model(self, name: str) -> dict[str, Any]:
        """The stored resource of a model version: ``ID``, ``ID@version``, ``ID@alias`` or a full name."""
        model_id, _, version = _model_key(name).partition("@")
        with self._lock:
            if model_id not in self.models:
                raise KeyError(name)
            model = self.models[model_id]
            return self._version_view(model, model.version(version or None))

    def endpoint(self, name: str) -> dict[str, Any]:
        return self.endpoints[name.rsplit("/", 1)[-1]]

    def read(self, uri: str) -> bytes:
        """The bytes of ``gs://bucket/name``."""
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return self.objects[bucket][name].data

    def files_under(self, uri: str) -> dict[str, bytes]:
        """Objects under the ``gs://bucket/prefix`` folder, by path relative to it."""
        bucket, _, prefix = uri.removeprefix("gs://").partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        with self._lock:
            return {name[len(prefix):]: obj.data for name, obj in self.objects.get(bucket, {}).items()
                    if name.startswith(prefix)}

    # ----- dispatch -----

    def _routes(self) -> list[tuple[str, str, Callable[..., tuple[int, Any]]]]:
        return [
            ("POST", _LOCATION + r"/models:upload", self._upload_model),
            ("GET", _LOCATION + r"/models", self._list_models),
            ("GET", _LOCATION + r"/models/" + _ID + r":listVersions", self._list_versions),
            ("POST", _LOCATION + r"/models/" + _ID + r":mergeVersionAliases", self._merge_aliases),
            ("GET", _LOCATION + r"/models/" + _ID, self._get_model),
            ("GET", r"/(?:v1|v1beta1|ui)/(?P<name>projects/.+/operations/[^/:]+)", self._get_operation),
            ("POST", _LOCATION + r"/endpoints", self._create_endpoint),
            ("GET", _LOCATION + r"/endpoints", self._list_endpoints),
            ("GET", _LOCATION + r"/endpoints/" + _ID, self._get_endpoint),
            ("POST", _LOCATION + r"/endpoints/" + _ID + r":deployModel", self._deploy_model),
            ("POST", _LOCATION + r"/endpoints/" + _ID + r":undeployModel", self._undeploy_model),
            ("POST", _LOCATION + r"/endpoints/" + _ID + r":predict", self._predict),
            ("GET", r"/storage/v1/b/(?P<bucket>[^/]+)", self._get_bucket),
            ("POST", r"/storage/v1/b", self._create_bucket),
            ("GET", r"/storage/v1/b/(?P<bucket>[^/]+)/o", self._list_objects),
            ("GET", r"/(?:download/)?storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>[^/]+)", self._get_object),
            ("DELETE", r"/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<object>[^/]+)", self._delete_object),
            ("POST", r"/upload/storage/v1/b/(?P<bucket>[^/]+)/o", self._upload_object),
            ("PUT", r"/upload/storage/v1/b/(?P<bucket>[^/]+)/o", self._resumable_chunk),
        ]

    def handle(self, request: RecordedRequest, raw_path: str) -> tuple[int, Any]:
        """Routes one request; returns (status, JSON-able body, or ``(bytes, headers)`` for raw answers)."""
        with self._lock:
            self.requests.append(request)
            for failure in self._failures:
                if failure["left"] and request.path.endswith(failure["suffix"]):
                    failure["left"] -= 1
                    raise ApiError(failure["code"], failure["status"], f"injected failure for {request.path}")
        for method, pattern, action in self._routes():
            match = re.fullmatch(pattern, raw_path)
            if method == request.method and match:
                groups = {key: unquote(value) for key, value in match.groupdict().items()}
                return action(request, **groups)
        raise ApiError(404, "NOT_FOUND", f"the stand-in has no route for {request.method} {request.path}")

    # ----- Vertex AI: operations -----

    def _operation(self, version: str, project: str, location: str, kind: str, response: dict[str, Any]) -> dict:
        name = f"projects/{project}/locations/{location}/operations/{next(self._ids['operation'])}"
        package = f"type.googleapis.com/google.cloud.aiplatform.{version}"
        operation = {
            "name": name,
            "metadata": {"@type": f"{package}.{kind}OperationMetadata",
                         "genericMetadata": {"createTime": _now(), "updateTime": _now()}},
            "done": True,
            "response": {"@type": f"{package}.{kind}Response" if kind != "CreateEndpoint" else f"{package}.Endpoint",
                         **response},
        }
        self._operations[name] = {"operation": operation, "polls_left": self.operation_polls}
        if self.operation_polls <= 0:
            return operation
        return {"name": name, "metadata": operation["metadata"], "done": False}

    def _get_operation(self, request: RecordedRequest, name: str) -> tuple[int, Any]:
        with self._lock:
            state = self._operations.get(name)
            if state is None:
                raise ApiError(404, "NOT_FOUND", f"operation {name} not found")
            state["polls_left"] -= 1
            if state["polls_left"] > 0:
                return 200, {key: state["operation"][key] for key in ("name", "metadata")} | {"done": False}
            return 200, state["operation"]

    # ----- Vertex AI: models -----

    def _find_model(self, model_id: str) -> _Model:
        if model_id not in self.models:
            raise ApiError(404, "NOT_FOUND", f"model {model_id} not found")
        return self.models[model_id]

    def _version_view(self, model: _Model, version: dict[str, Any]) -> dict[str, Any]:
        deployed = [{"endpoint": endpoint["name"], "deployedModelId": dm["id"]}
                    for endpoint in self.endpoints.values() for dm in endpoint.get("deployedModels", [])
                    if dm["model"] == model.name and dm["modelVersionId"] == version["versionId"]]
        return {**version, "deployedModels": deployed} if deployed else dict(version)

    def _upload_model(self, request: RecordedRequest, version: str, project: str, location: str) -> tuple[int, Any]:
        body = request.body or {}
        spec = dict(body.get("model", {}))
        with self._lock:
            if body.get("parentModel"):
                model = self._find_model(_model_key(body["parentModel"]))
            else:
                model_id = body.get("modelId") or str(next(self._ids["model"]))
                model = self.models[model_id] = _Model(project, location, model_id)
            version_id = str(len(model.versions) + 1)
            aliases = list(spec.pop("versionAliases", []))
            if not model.versions and "default" not in aliases:
                aliases.append("default")
            stored = {
                **spec,
                "name": model.name,
                "versionId": version_id,
                "versionAliases": [],
                "createTime": _now(),
                "updateTime": _now(),
                "versionCreateTime": _now(),
                "versionUpdateTime": _now(),
                "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"],
                "etag": uuid.uuid4().hex,
            }
            model.versions[version_id] = stored
            model.assign_aliases(stored, aliases)
            return 200, self._operation(version, project, location, "UploadModel",
                                        {"model": model.name, "modelVersionId": version_id})

    def _get_model(self, request: RecordedRequest, version: str, project: str, location: str,
                   id: str) -> tuple[int, Any]:
        model_id, _, wanted = id.partition("@")
        with self._lock:
            model = self._find_model(model_id)
            return 200, self._version_view(model, model.version(wanted or None))

    def _list_models(self, request: RecordedRequest, version: str, project: str, location: str) -> tuple[int, Any]:
        terms = _parse_filter(request.query.get("filter", ""))
        with self._lock:
            found = [self._version_view(model, model.version(None)) for model in self.models.values()
                     if (model.project, model.location) == (project, location)]
        return 200, {"models": [model for model in found if _matches(model, terms)]}

    def _list_versions(self, request: RecordedRequest, version: str, project: str, location: str,
                       id: str) -> tuple[int, Any]:
        terms = _parse_filter(request.query.get("filter", ""))
        with self._lock:
            model = self._find_model(id.partition("@")[0])
            versions = [self._version_view(model, stored) for stored in model.versions.values()]
        return 200, {"models": [stored for stored in versions if _matches(stored, terms)]}

    def _merge_aliases(self, request: RecordedRequest, version: str, project: str, location: str,
                       id: str) -> tuple[int, Any]:
        model_id, _, wanted = id.partition("@")
        with self._lock:
            model = self._find_model(model_id)
            stored = model.version(wanted or None)
            model.assign_aliases(stored, list((request.body or {}).get("versionAliases", [])))
            return 200, self._version_view(model, stored)

    # ----- Vertex AI: endpoints -----

    def _find_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        if endpoint_id not in self.endpoints:
            raise ApiError(404, "NOT_FOUND", f"endpoint {endpoint_id} not found")
        return self.endpoints[endpoint_id]

    def _create_endpoint(self, request: RecordedRequest, version: str, project: str,
                         location: str) -> tuple[int, Any]:
        with self._lock:
            endpoint_id = request.query.get("endpointId") or str(next(self._ids["endpoint"]))
            endpoint = {
                **(request.body or {}),
                "name": f"projects/{project}/locations/{location}/endpoints/{endpoint_id}",
                "deployedModels": [],
                "trafficSplit": {},
                "createTime": _now(),
                "updateTime": _now(),
                "etag": uuid.uuid4().hex,
            }
            self.endpoints[endpoint_id] = endpoint
            return 200, self._operation(version, project, location, "CreateEndpoint", endpoint)

    def _get_endpoint(self, request: RecordedRequest, version: str, project: str, location: str,
                      id: str) -> tuple[int, Any]:
        with self._lock:
            return 200, self._find_endpoint(id)

    def _list_endpoints(self, request: RecordedRequest, version: str, project: str,
                        location: str) -> tuple[int, Any]:
        terms = _parse_filter(request.query.get("filter", ""))
        prefix = f"projects/{project}/locations/{location}/"
        with self._lock:
            return 200, {"endpoints": [endpoint for endpoint in self.endpoints.values()
                                       if endpoint["name"].startswith(prefix) and _matches(endpoint, terms)]}

    def _deploy_model(self, request: RecordedRequest, version: str, project: str, location: str,
                      id: str) -> tuple[int, Any]:
        body = request.body or {}
        deployed = json.loads(json.dumps(body.get("deployedModel", {})))
        with self._lock:
            endpoint = self._find_endpoint(id)
            model_id, _, wanted = _model_key(deployed.get("model", "")).partition("@")
            model = self._find_model(model_id)
            model_version = model.version(wanted or None)
            spec = deployed.get("dedicatedResources", {}).get("machineSpec", {})
            if isinstance(spec.get("acceleratorType"), int):
                spec["acceleratorType"] = _ACCELERATOR_NAMES[spec["acceleratorType"]]
            deployed_id = str(next(self._ids["deployed"]))
            deployed.update(id=deployed_id, model=model.name, modelVersionId=model_version["versionId"],
                            createTime=_now())
            deployed.setdefault("displayName", model_version.get("displayName", ""))
            endpoint["deployedModels"].append(deployed)
            if "trafficSplit" in body:
                split = {deployed_id if key == "0" else key: value for key, value in body["trafficSplit"].items()}
            elif len(endpoint["deployedModels"]) == 1:
                split = {deployed_id: 100}
            else:
                split = endpoint["trafficSplit"]
            endpoint["trafficSplit"] = {key: value for key, value in split.items() if value}
            endpoint["updateTime"] = _now()
            self._round_robin.pop(id, None)
            return 200, self._operation(version, project, location, "DeployModel", {"deployedModel": deployed})

    def _undeploy_model(self, request: RecordedRequest, version: str, project: str, location: str,
                        id: str) -> tuple[int, Any]:
        body = request.body or {}
        with self._lock:
            endpoint = self._find_endpoint(id)
            deployed_id = body.get("deployedModelId", "")
            if not any(dm["id"] == deployed_id for dm in endpoint["deployedModels"]):
                raise ApiError(404, "NOT_FOUND", f"deployed model {deployed_id} not on endpoint {id}")
            endpoint["deployedModels"] = [dm for dm in endpoint["deployedModels"] if dm["id"] != deployed_id]
            split = body.get("trafficSplit", endpoint["trafficSplit"])
            endpoint["trafficSplit"] = {key: value for key, value in split.items() if value and key != deployed_id}
            endpoint["updateTime"] = _now()
            self._round_robin.pop(id, None)
            return 200, self._operation(version, project, location, "UndeployModel", {})

    def _pick_deployed_model(self, endpoint_id: str, endpoint: dict[str, Any]) -> dict[str, Any] | None:
        """Smooth weighted round robin over the traffic split (deterministic, exact proportions)."""
        split = {key: value for key, value in sorted(endpoint.get("trafficSplit", {}).items()) if value > 0}
        if not split:
            return None
        weights = self._round_robin.setdefault(endpoint_id, dict.fromkeys(split, 0))
        for key, value in split.items():
            weights[key] += value
        chosen = max(split, key=lambda key: weights[key])
        weights[chosen] -= sum(split.values())
        return next(dm for dm in endpoint["deployedModels"] if dm["id"] == chosen)

    def _predictor_for(self, deployed: dict[str, Any]) -> Predictor | None:
        model_id = _model_key(deployed["model"])
        version = self.models[model_id].versions[deployed["modelVersionId"]]
        keys = [f"{model_id}@{deployed['modelVersionId']}",
                *(f"{model_id}@{alias}" for alias in version["versionAliases"]), model_id]
        return next((self._predictors[key] for key in keys if key in self._predictors), None)

    def _predict(self, request: RecordedRequest, version: str, project: str, location: str,
                 id: str) -> tuple[int, Any]:
        body = request.body or {}
        with self._lock:
            endpoint = self._find_endpoint(id)
            deployed = self._pick_deployed_model(id, endpoint)
            predictor = self._endpoint_predictors.get(id)
            if predictor is None and deployed is not None:
                predictor = self._predictor_for(deployed)
        if predictor is None:
            raise ApiError(400, "FAILED_PRECONDITION",
                           f"no predictor serves endpoint {id} (deployed model {deployed and deployed['id']})")
        predictions = predictor(list(body.get("instances", [])), body.get("parameters"))
        answer: dict[str, Any] = {"predictions": list(predictions)}
        if deployed is not None:
            answer.update(deployedModelId=deployed["id"], model=deployed["model"],
                          modelVersionId=deployed["modelVersionId"],
                          modelDisplayName=deployed.get("displayName", ""))
        return 200, answer

    # ----- Cloud Storage -----

    def _bucket_resource(self, name: str) -> dict[str, Any]:
        return {"kind": "storage#bucket", "id": name, "name": name, "projectNumber": PROJECT_NUMBER,
                "location": self.location.upper(), "storageClass": "STANDARD", "metageneration": "1",
                "timeCreated": _now(), "updated": _now(), "etag": "CAE="}

    def _get_bucket(self, request: RecordedRequest, bucket: str) -> tuple[int, Any]:
        with self._lock:
            if bucket not in self.buckets:
                raise ApiError(404, "NOT_FOUND", f"bucket {bucket} not found")
            return 200, self.buckets[bucket]

    def _create_bucket(self, request: RecordedRequest) -> tuple[int, Any]:
        name = (request.body or {}).get("name", "")
        with self._lock:
            if name in self.buckets:
                raise ApiError(409, "ALREADY_EXISTS", f"bucket {name} already exists")
            self.buckets[name] = {**(request.body or {}), **self._bucket_resource(name)}
            self.objects.setdefault(name, {})
            return 200, self.buckets[name]

    def _store(self, bucket: str, metadata: dict[str, Any], data: bytes, content_type: str) -> dict[str, Any]:
        name = metadata.get("name", "")
        if not name:
            raise ApiError(400, "INVALID_ARGUMENT", "an object name is required")
        with self._lock:
            if bucket not in self.buckets:
                self.buckets[bucket] = self._bucket_resource(bucket)
            stored = StoredObject(bucket, name, data, metadata.get("contentType") or content_type,
                                  next(self._generation), {k: v for k, v in metadata.items() if k != "name"})
            self.objects.setdefault(bucket, {})[name] = stored
            return stored.resource()

    def _upload_object(self, request: RecordedRequest, bucket: str) -> tuple[int, Any]:
        upload_type = request.query.get("uploadType", "media")
        content_type = request.headers.get("content-type", "application/octet-stream")
        if upload_type == "media":
            return 200, self._store(bucket, {"name": request.query.get("name", "")}, request.raw_body, content_type)
        if upload_type == "multipart":
            boundary = re.search(r'boundary="?([^";]+)"?', content_type)
            if not boundary:
                raise ApiError(400, "INVALID_ARGUMENT", "multipart upload without a boundary")
            metadata, data, media_type = _split_multipart(request.raw_body, boundary.group(1).encode())
            request.body = metadata
            if request.query.get("name"):
                metadata.setdefault("name", request.query["name"])
            return 200, self._store(bucket, metadata, data, media_type)
        if upload_type == "resumable":
            metadata = dict(request.body or {})
            if request.query.get("name"):
                metadata.setdefault("name", request.query["name"])
            upload_id = uuid.uuid4().hex
            with self._lock:
                self._resumable[upload_id] = {"metadata": metadata, "data": bytearray(),
                                              "content_type": request.headers.get("x-upload-content-type",
                                                                                  "application/octet-stream")}
            location = f"{self.url}/upload/storage/v1/b/{quote(bucket, safe='')}/o?uploadType=resumable" \
                       f"&upload_id={upload_id}"
            return 200, (b"", {"Location": location})
        raise ApiError(400, "INVALID_ARGUMENT", f"unsupported uploadType {upload_type}")

    def _resumable_chunk(self, request: RecordedRequest, bucket: str) -> tuple[int, Any]:
        with self._lock:
            upload = self._resumable.get(request.query.get("upload_id", ""))
            if upload is None:
                raise ApiError(404, "NOT_FOUND", "unknown resumable upload")
            match = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)",
                                 request.headers.get("content-range", f"bytes */{len(request.raw_body)}"))
            if match is None:
                raise ApiError(400, "INVALID_ARGUMENT", "bad Content-Range")
            if match.group(1) is not None:
                del upload["data"][int(match.group(1)):]
                upload["data"] += request.raw_body
            total = match.group(3)
            if total != "*" and len(upload["data"]) >= int(total):
                del self._resumable[request.query["upload_id"]]
                return 200, self._store(bucket, upload["metadata"], bytes(upload["data"]), upload["content_type"])
            headers = {"Range": f"bytes=0-{len(upload['data']) - 1}"} if upload["data"] else {}
            return 308, (b"", headers)

    def _find_object(self, bucket: str, name: str) -> StoredObject:
        stored = self.objects.get(bucket, {}).get(name)
        if stored is None:
            raise ApiError(404, "NOT_FOUND", f"object gs://{bucket}/{name} not found")
        return stored

    def _get_object(self, request: RecordedRequest, bucket: str, object: str) -> tuple[int, Any]:
        with self._lock:
            stored = self._find_object(bucket, object)
        if request.query.get("alt") != "media":
            return 200, stored.resource()
        resource = stored.resource()
        headers = {"Content-Type": stored.content_type, "x-goog-generation": str(stored.generation),
                   "x-goog-hash": f"crc32c={resource['crc32c']},md5={resource['md5Hash']}"}
        data = stored.data
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
        if wanted:
            start, end = int(wanted.group(1)), int(wanted.group(2) or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            return 206, (data[start:end + 1], headers)
        return 200, (data, headers)

    def _delete_object(self, request: RecordedRequest, bucket: str, object: str) -> tuple[int, Any]:
        with self._lock:
            self._find_object(bucket, object)
            del self.objects[bucket][object]
        return 204, (b"", {})

    def _list_objects(self, request: RecordedRequest, bucket: str) -> tuple[int, Any]:
        prefix, delimiter = request.query.get("prefix", ""), request.query.get("delimiter", "")
        with self._lock:
            if bucket not in self.buckets:
                raise ApiError(404, "NOT_FOUND", f"bucket {bucket} not found")
            names = sorted(name for name in self.objects.get(bucket, {}) if name.startswith(prefix))
            items, prefixes = [], set()
            for name in names:
                rest = name[len(prefix):]
                if delimiter and delimiter in rest:
                    prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                else:
                    items.append(self.objects[bucket][name].resource())
        return 200, {"kind": "storage#objects", "items": items, "prefixes": sorted(prefixes)}


def _split_multipart(body: bytes, boundary: bytes) -> tuple[dict[str, Any], bytes, str]:
    """The (JSON metadata, media bytes, media content type) of a ``multipart/related`` upload body."""
    parts = []
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        content_type = re.search(rb"(?im)^content-type:\s*(.+?)\s*$", head)
        parts.append((content.removesuffix(b"\r\n"), content_type.group(1).decode() if content_type else ""))
    if len(parts) != 2:
        raise ApiError(400, "INVALID_ARGUMENT", f"multipart upload with {len(parts)} parts")
    return json.loads(parts[0][0] or b"{}"), parts[1][0], parts[1][1] or "application/octet-stream"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: with Nagle's algorithm on, each answer on a kept-alive connection waits
    # for the client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    stand_in: VertexStandIn

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(data)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        raw_body = self._read_body()
        try:
            body = json.loads(raw_body) if raw_body and "json" in self.headers.get("Content-Type", "json") else None
        except (ValueError, UnicodeDecodeError):
            body = None
        request = RecordedRequest(
            method=self.command, path=unquote(split.path), query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={key.lower(): value for key, value in self.headers.items()}, body=body, raw_body=raw_body)
        try:
            status, answer = self.stand_in.handle(request, split.path)
        except ApiError as error:
            status, answer = error.code, {"error": {"code": error.code, "message": error.message,
                                                    "status": error.status,
                                                    "errors": [{"message": error.message, "reason": error.status}]}}
        except Exception as error:  # a predictor's own failure is answered as a server error
            status, answer = 500, {"error": {"code": 500, "message": f"{type(error).__name__}: {error}",
                                             "status": "INTERNAL"}}
        if isinstance(answer, tuple):
            payload, headers = answer
        else:
            payload, headers = json.dumps(answer).encode(), {"Content-Type": "application/json; charset=UTF-8"}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch


@contextlib.contextmanager
def vertex_stand_in(staging_bucket: str | None = "gs://stage-bucket", **kwargs: Any) -> Iterator[VertexStandIn]:
    """A started stand-in with aiplatform pointed at it (``init_aiplatform``) and ``STORAGE_EMULATOR_HOST`` set;
    afterwards aiplatform's global config and the environment are restored."""
    config = initializer.global_config
    saved = dict(vars(config))
    with VertexStandIn(**kwargs) as stand_in, stand_in.storage_env():
        try:
            stand_in.init_aiplatform(**({"staging_bucket": staging_bucket} if staging_bucket else {}))
            yield stand_in
        finally:
            vars(config).clear()
            vars(config).update(saved)


class StandInVertexAIModelHandlerJSON(VertexAIModelHandlerJSON):
    """``VertexAIModelHandlerJSON`` that points aiplatform at ``api_endpoint`` (the stand-in's ``url``) in every
    process it runs in: before the base constructor's endpoint lookup, and again in ``create_client`` (which Beam
    calls in the worker, where the launcher's ``aiplatform.init`` never happened)."""

    def __init__(self, endpoint_id: str, project: str, location: str, *, api_endpoint: str, **kwargs: Any) -> None:
        self._api_endpoint, self._project, self.location = api_endpoint, project, location
        self._point_aiplatform()
        super().__init__(endpoint_id=endpoint_id, project=project, location=location, **kwargs)

    def _point_aiplatform(self) -> None:
        aiplatform.init(project=self._project, location=self.location, api_endpoint=self._api_endpoint,
                        credentials=AnonymousCredentials(), api_transport="rest")

    def create_client(self) -> aiplatform.Endpoint:
        self._point_aiplatform()
        return super().create_client()
