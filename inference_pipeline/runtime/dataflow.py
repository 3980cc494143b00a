"""The streaming pipeline on Dataflow: pipeline options from the config's ``dataflow`` section (then
``pipeline_options``, which override it), the whole job built offline (``dry_run_job``: Beam's dry run plus the
worker environment Beam otherwise builds only at submission), and a launch (``launch``) that checks its
requirements in seconds (``runtime.preflight``), submits the job with the model version staged for the workers
(``runtime.staging``) and returns with the job's id and console URL, never waiting on the running stream.

On Dataflow the results go to the warehouse and topic sinks; the config refuses an SQLite sink there
(``config.check_dataflow_deployment``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from inference_pipeline.builder import create_pipeline
from inference_pipeline.config import Config, DataflowSettings
from inference_pipeline.runtime import preflight
from inference_pipeline.runtime.run import configured_version, event_rules
from inference_pipeline.runtime.staging import StagedVersion, stage_version, staged, staged_uri
from model_handlers.model_version import ModelVersion

DEFAULTS: dict[str, Any] = {"runner": "DataflowRunner", "streaming": True, "sdk_location": "container"}
CONSOLE_URL = "https://console.cloud.google.com/dataflow/jobs/{region}/{job_id}?project={project}"
REQUIRED = {"project": "project", "region": "region", "temp_location": "temp_location",
            "sdk_container_image": "worker_image"}
STAGE_COMMAND = "iotml deploy stage-model --config <this config>"


@dataclasses.dataclass(frozen=True)
class LaunchedJob:
    """A submitted job: its id, name, project and region."""

    job_id: str
    name: str
    project: str
    region: str

    @property
    def console_url(self) -> str:
        return CONSOLE_URL.format(region=self.region, job_id=self.job_id, project=self.project)

    def describe(self) -> str:
        return (f"submitted Dataflow job {self.name}: {self.job_id}\nconsole: {self.console_url}\n"
                f"drain it: gcloud dataflow jobs drain {self.job_id} --region {self.region} --project {self.project}")


def section_options(settings: DataflowSettings) -> dict[str, Any]:
    """Beam's Dataflow options for the ``dataflow`` section (names as ``PipelineOptions`` keeps them)."""
    service = [f"min_num_workers={settings.min_workers}"]
    if settings.gpu is not None:
        service.append(settings.gpu.service_option)
    if settings.at_least_once:
        service.append("streaming_mode_at_least_once")
    options = {
        "project": settings.project, "region": settings.region, "temp_location": settings.temp_location,
        "sdk_container_image": settings.worker_image, "job_name": settings.job_name,
        "machine_type": settings.machine_type, "num_workers": settings.min_workers,
        "max_num_workers": settings.max_workers, "autoscaling_algorithm": "THROUGHPUT_BASED",
        "enable_streaming_engine": True, "use_public_ips": settings.public_ips, "dataflow_service_options": service,
        "labels": [f"{key}={value}" for key, value in settings.labels.items()],
        "experiments": list(settings.experiments), "update": settings.update,
        "disk_size_gb": settings.disk_size_gb, "service_account_email": settings.service_account,
        "network": settings.network, "subnetwork": settings.subnetwork,
        "transform_name_mapping": dict(settings.transform_name_mapping) or None,
    }
    return {key: value for key, value in options.items() if value is not None}


def dataflow_options(config: Config, **extra: Any) -> PipelineOptions:
    """The job's options: Dataflow's defaults, the ``dataflow`` section, ``pipeline_options``, then ``extra``;
    ValueError naming the field when a required one is missing."""
    values = {**DEFAULTS, **(section_options(config.dataflow) if config.dataflow else {}),
              **config.pipeline_options, **extra}
    for option, field in REQUIRED.items():
        if not values.get(option):
            raise ValueError(f"dataflow.{field} (or pipeline_options.{option}): required to run on Dataflow")
    return PipelineOptions(flags=[], **values)


def model_root(config: Config, options: PipelineOptions) -> str:
    """Where versions are staged for the workers: ``dataflow.model_location``, else ``<temp_location>/models``."""
    if config.dataflow is not None:
        return config.dataflow.models
    return f"{options.view_as(GoogleCloudOptions).temp_location.rstrip('/')}/models"


def _build(config: Config, version: StagedVersion, options: PipelineOptions) -> beam.Pipeline:
    return create_pipeline(config, version, event_rules(config, version), options).pipeline


def dry_run_job(config: Config, version: ModelVersion | None = None) -> dict[str, Any]:
    """The whole job, built offline by Beam's Dataflow dry run (no credentials, nothing submitted): the Job
    resource with its worker environment, and ``steps``, every transform of the pipeline in graph order. An update
    (``dataflow.update``) is built as a new job plus its ``transformNameMapping``: the running job it replaces is
    looked up only at launch."""
    from apache_beam.runners.dataflow.internal import apiclient
    from google.protobuf import json_format

    version = version or configured_version(config)
    options = dataflow_options(config, dry_run=True, no_auth=True, update=False)
    pipeline = _build(config, staged(version, model_root(config, options)), options)
    job = pipeline.run().job
    proto = pipeline.runner.proto_pipeline
    staging = job.options.view_as(GoogleCloudOptions).staging_location
    environment = apiclient.Environment([], job.options, apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
                                        f"{staging}/pipeline.pb", proto_pipeline=proto)
    job.proto.environment = environment.proto
    described = json.loads(json_format.MessageToJson(job.proto._pb))
    if config.dataflow is not None and config.dataflow.update:
        described["transformNameMapping"] = dict(config.dataflow.transform_name_mapping)
    described["steps"] = [{"name": name, "kind": kind} for name, kind in _steps(proto)]
    return described


def _steps(proto: Any) -> list[tuple[str, str]]:
    """(unique name, URN) of every transform under the pipeline's roots, depth first in graph order."""
    transforms, found = proto.components.transforms, []

    def visit(transform_id: str) -> None:
        transform = transforms[transform_id]
        if transform.spec.urn:  # the pipeline's own root has none
            found.append((transform.unique_name, transform.spec.urn))
        for child in transform.subtransforms:
            visit(child)

    for root in proto.root_transform_ids:
        visit(root)
    return found


def write_job(job: dict[str, Any], output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(job, indent=2, sort_keys=True) + "\n")
    return output


@dataclasses.dataclass(frozen=True)
class _Connected:
    """What a launch and a staging share once credentials and network are checked."""

    options: PipelineOptions
    version: ModelVersion
    storage: Any
    root: str


def _connect(config: Config) -> _Connected:
    options = dataflow_options(config)
    cloud = options.view_as(GoogleCloudOptions)
    found = preflight.credentials(bool(cloud.no_auth))
    preflight.check_network(found)
    return _Connected(options, configured_version(config), preflight.storage_client(cloud.project, found),
                      model_root(config, options))


def launch(config: Config) -> LaunchedJob:
    """Check credentials, network, buckets and the staged model (``runtime.preflight``, seconds each), then submit
    the job and return; the stream runs on Dataflow until drained or cancelled."""
    connected = _connect(config)
    cloud = connected.options.view_as(GoogleCloudOptions)
    section = "dataflow" if config.dataflow is not None else "pipeline_options"
    locations = {f"{section}.temp_location": cloud.temp_location, "dataflow.model_location": connected.root}
    if cloud.staging_location:
        locations["pipeline_options.staging_location"] = cloud.staging_location
    for field, location in locations.items():
        preflight.check_bucket(connected.storage, location, field)
    version = connected.version
    preflight.check_staged(connected.storage, version, staged_uri(connected.root, version), STAGE_COMMAND)
    result = _build(config, staged(version, connected.root), connected.options).run()
    return LaunchedJob(result.job_id(), cloud.job_name, cloud.project, cloud.region)


def stage_model(config: Config) -> str:
    """Copy the version ``model.uri`` names to the model location (checked first like a launch); its URI."""
    connected = _connect(config)
    preflight.check_bucket(connected.storage, connected.root, "dataflow.model_location")
    return stage_version(connected.version, connected.root, connected.storage)
