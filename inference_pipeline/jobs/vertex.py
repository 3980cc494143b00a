"""``iotml vertex upload | deploy`` and ``training.registry: vertex``: registered versions put into the Vertex AI Model
Registry of ``model.vertex`` (aliases mirrored from MLflow's) and onto its endpoints (``training.vertex_register``)."""
from __future__ import annotations

from pathlib import Path

from inference_pipeline.config import Config, ConfigError
from model_handlers.model_version import ModelVersion
from model_handlers.resolve import resolve_model_version
from model_handlers.vertex import VertexProject
from training.settings import VertexServing
from training.vertex_register import (VertexDeployment, VertexVersion, deploy_version, mirror_aliases, mlflow_aliases,
                                      upload_version)
from training.workflow import TrainingRun


def _project(config: Config) -> VertexProject:
    if config.model.vertex is None:
        raise ConfigError("model.vertex: set the Vertex AI project and location (and staging_bucket to upload)")
    return config.model.vertex


def _serving(config: Config, image: str | None) -> VertexServing:
    if image:
        serving = config.training.vertex_serving or VertexServing(image_uri=image)
        return serving.model_copy(update={"image_uri": image})
    if config.training.vertex_serving is None:
        raise ConfigError("training.vertex_serving.image_uri: the serving container is required to upload (build it "
                          "with `mlflow models build-docker -m models:/<name>/<version> -n <image>`), or give --image")
    return config.training.vertex_serving


def upload(config: Config, name: str, version: str | None = None, image: str | None = None) -> list[VertexVersion]:
    """Upload MLflow version ``version`` of ``name`` (default: the champion) with its serving container, then mirror
    every MLflow alias onto the Vertex versions; the Vertex versions after."""
    uri = f"models:/{name}/{version}" if version else f"models:/{name}@champion"
    found = resolve_model_version(uri, config.tracking_uri, config.work_path / "models")
    return _publish(config, found, _serving(config, image))


def _publish(config: Config, version: ModelVersion, serving: VertexServing) -> list[VertexVersion]:
    project = _project(config)
    aliases = mlflow_aliases(config.tracking_uri, version.name)
    upload_version(version, project, serving, aliases.get(version.version, ()))
    return mirror_aliases(version.name, aliases, project)


def publish_trained(config: Config, run: TrainingRun) -> list[VertexVersion] | None:
    """After ``iotml train``: with ``training.registry: vertex``, the new version uploaded and the aliases mirrored."""
    if config.training.registry != "vertex":
        return None
    registration = run.registration
    version = ModelVersion.open(Path(run.bundle_dir)).with_identity(registration.name, registration.version)
    return _publish(config, version, _serving(config, None))


def deploy(config: Config, model: str, **options) -> VertexDeployment:
    """Deploy ``model`` (a ``vertex:`` reference) on an endpoint (``training.vertex_register.deploy_version``)."""
    return deploy_version(model, _project(config), **options)


def describe_versions(versions: list[VertexVersion]) -> str:
    return "\n".join(f"{v.display_name} v{v.version_id} ({v.uri}) aliases: {', '.join(v.aliases) or '-'}"
                     for v in versions)


def describe_deployment(config: Config, deployment: VertexDeployment, model: str) -> str:
    split = ", ".join(f"{deployed} {percent} %" for deployed, percent in deployment.traffic_split.items())
    project = _project(config)
    return (f"deployed {model} on endpoint {deployment.endpoint_id} as {deployment.deployed_model_id}; traffic: "
            f"{split}\nserve it: model: {{handler: vertex_endpoint, endpoint_id: \"{deployment.endpoint_id}\", "
            f"uri: \"{model}\", vertex: {{project: {project.project}, location: {project.location}}}}}")
