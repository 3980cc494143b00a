"""The deployment config: one YAML file, validated once at start; CLI flags override fields by dotted path.

Each section is owned by the package that uses it (the simulator's and training's in ``training.settings``, the
feature spec in ``features``, each step's beside the step). ``model``, ``source`` and each entry of ``sinks`` are
discriminated unions over the kinds registered in ``model_handlers.kinds.HANDLERS`` (by ``model.handler``) and
``inference_pipeline.connectors.kinds.SOURCES`` / ``SINKS`` (by ``kind``): the config accepts exactly the kinds registered
when it is loaded, and each kind validates its own settings.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from features.spec import FeatureSpec
from inference_pipeline.connectors.base import ConnectorSettings, Sink, SinkContext, SinkSettings
from inference_pipeline.connectors.feature_stores import EnrichmentSettings
from inference_pipeline.connectors.kinds import SINKS, SOURCES
from inference_pipeline.connectors.mqtt.settings import MqttSourceSettings
from inference_pipeline.connectors.replay import ReplaySettings
from inference_pipeline.connectors.sqlite import SqliteSettings
from inference_pipeline.steps.alerts import AlertSettings
from inference_pipeline.steps.dedup import DedupSettings
from inference_pipeline.steps.parse import EventSettings
from inference_pipeline.steps.roster import FleetSettings
from model_handlers import forecaster
from model_handlers.kinds import HANDLERS
from model_handlers.settings import ModelSettings
from model_handlers.torch_handler import TorchSettings
from training.settings import SimulationSettings, TrainingSettings

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"
SIMULATOR_SENSORS = (
    "flow_rate", "pressure", "motor_current", "vibration_rms", "bearing_temp", "motor_temp", "voltage", "rpm",
)
DEFAULT_KINDS = {"model": ("handler", "torch"), "source": ("kind", "replay")}
TAGS = ("kind", "handler", "store")  # the discriminators of the config's unions


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending field."""


def check_dedup_covers_redelivery(source: ConnectorSettings, dedup: DedupSettings) -> None:
    """After a reconnect an MQTT broker resends every unacknowledged message: up to ``source.mqtt.max_inflight``
    (the Receive Maximum), all possibly of one device. Dedup must remember at least that many ids per device, or a
    resent copy of an event it already forgot is predicted twice."""
    if isinstance(source, MqttSourceSettings) and dedup.max_ids_per_device < source.mqtt.max_inflight:
        raise ValueError(
            f"dedup.max_ids_per_device ({dedup.max_ids_per_device}) is below source.mqtt.max_inflight "
            f"({source.mqtt.max_inflight}), the unacknowledged messages a broker resends after a reconnect: "
            "raise dedup.max_ids_per_device or lower source.mqtt.max_inflight")


DATAFLOW_RUNNERS = ("DataflowRunner", "apache_beam.runners.dataflow.dataflow_runner.DataflowRunner")
# The machine family each accelerator is attached to (the rest: n1); Compute Engine's GPU platforms.
GPU_MACHINE_FAMILIES = {"nvidia-l4": "g2", "nvidia-tesla-a100": "a2", "nvidia-a100-80gb": "a2",
                        "nvidia-h100-80gb": "a3", "nvidia-h100-mega-80gb": "a3"}
_GCS_PATH = r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$"
_LABEL = r"^[a-z][a-z0-9_-]{0,62}$"


class DataflowGpu(BaseModel):
    """``type``: the accelerator on every worker (``nvidia-l4``, ``nvidia-tesla-t4``, ...); ``count`` per worker;
    ``driver``: the NVIDIA driver Dataflow installs, ``install-nvidia-driver:<driver>`` (empty: its default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(pattern=r"^nvidia-[a-z0-9-]+$")
    count: int = Field(1, ge=1, le=8)
    driver: str = Field("latest", pattern=r"^[a-z0-9.]*$")

    @property
    def service_option(self) -> str:
        """Dataflow's ``worker_accelerator`` service option."""
        install = f"install-nvidia-driver:{self.driver}" if self.driver else "install-nvidia-driver"
        return f"worker_accelerator=type:{self.type};count:{self.count};{install}"


class DataflowSettings(BaseModel):
    """The Dataflow job (docs/deploy.md): ``project``, ``region``, ``temp_location`` (an existing bucket);
    ``model_location``: the served version's copy the workers read (``iotml deploy stage-model``; default
    ``<temp_location>/models``); ``worker_image`` (deploy/worker); ``job_name``: stable, as an update finds the running
    job by it; ``machine_type``; ``gpu`` (none: CPU workers); ``min_workers``/``max_workers``: autoscaling bounds;
    ``service_account``: the workers' identity; ``network``/``subnetwork``; ``public_ips`` (false: private IPs, the
    subnetwork needs Private Google Access); ``labels``; ``at_least_once``: Dataflow's at-least-once streaming mode
    (dedup drops redelivered events); ``update``: replace the running job in place, ``transform_name_mapping``
    naming renamed steps (old -> new); ``experiments``: Dataflow experiments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    region: str = Field(pattern=r"^[a-z]+-[a-z]+[0-9]+$")
    temp_location: str = Field(pattern=_GCS_PATH)
    model_location: str | None = Field(None, pattern=_GCS_PATH)
    worker_image: str = Field(pattern=r"^[^\s:/]+(:\d+)?/\S+$")
    job_name: str = Field("iotml-stream", pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
    machine_type: str = "g2-standard-4"
    gpu: DataflowGpu | None = None
    min_workers: int = Field(1, ge=1)
    max_workers: int = Field(4, ge=1)
    disk_size_gb: int | None = Field(None, ge=10)
    service_account: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$")
    network: str | None = None
    subnetwork: str | None = None
    public_ips: bool = False
    labels: dict[Annotated[str, Field(pattern=_LABEL)], Annotated[str, Field(pattern=r"^[a-z0-9_-]{0,63}$")]] = {}
    at_least_once: bool = False
    update: bool = False
    transform_name_mapping: dict[str, str] = {}
    experiments: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> DataflowSettings:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) is below min_workers ({self.min_workers})")
        if self.gpu is not None:
            family = GPU_MACHINE_FAMILIES.get(self.gpu.type, "n1")
            if not self.machine_type.startswith(f"{family}-"):
                raise ValueError(f"machine_type: {self.gpu.type} GPUs are attached to {family} machine types, "
                                 f"not {self.machine_type}")
        return self

    @property
    def models(self) -> str:
        """Where staged versions are copied for the workers."""
        return self.model_location or f"{self.temp_location.rstrip('/')}/models"


def check_dataflow_deployment(config: Config) -> None:
    """What cannot run on Dataflow, refused at load: a worker's disk is no results store, and the workers receive
    only the staged ``model.uri`` version; they watch a registry only if they can reach it."""
    for name, sink in config.sinks.items():
        if isinstance(sink, SqliteSettings):
            raise ValueError(f"sinks.{name}.kind: sqlite writes a file on one worker's disk, lost with the worker: "
                             "on Dataflow write results to bigquery, postgres or pubsub sinks")
    for field in ("groups", "shadow"):
        if getattr(config.model, field):
            raise ValueError(f"model.{field}: not served on Dataflow (its versions are not staged for the workers)")
    tracking = config.model.tracking_uri or ""
    if config.model.watch_s and config.model.uri.startswith("models:/") and not tracking.startswith("http"):
        raise ValueError("model.watch_s: Dataflow workers cannot reach this MLflow registry to watch its alias: "
                         "set model.tracking_uri to an http(s) tracking server, or model.watch_s: 0 (promote by "
                         "updating the job)")


class Config(BaseModel):
    """One deployment. Build it with ``load_config``: ``model``, ``source`` and ``sinks`` take the registered kinds."""

    model_config = ConfigDict(extra="forbid")

    work_dir: str = "work"
    simulation: SimulationSettings = SimulationSettings()
    features: FeatureSpec = FeatureSpec(sensors=SIMULATOR_SENSORS)
    training: TrainingSettings = TrainingSettings()
    model: ModelSettings = TorchSettings()
    source: ConnectorSettings = ReplaySettings()
    events: EventSettings = EventSettings()
    alerting: AlertSettings = AlertSettings()
    sinks: dict[str, SinkSettings] = Field(default_factory=lambda: {"results": SqliteSettings()})
    dedup: DedupSettings = DedupSettings()
    enrichment: EnrichmentSettings | None = None
    devices: FleetSettings = FleetSettings()
    pipeline_options: dict[str, Any] = Field(default_factory=dict)
    dataflow: DataflowSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_kinds(cls, data: Any) -> Any:
        return with_default_kinds(data)

    @model_validator(mode="after")
    def _dedup_covers_redelivery(self) -> Config:
        check_dedup_covers_redelivery(self.source, self.dedup)
        return self

    @model_validator(mode="after")
    def _forecaster_fits_its_lags(self) -> Config:
        if self.training.model == forecaster.KIND:
            context = self.features.lags - forecaster.horizon(self.features)
            if self.training.patchtst.patch_length >= context:
                raise ValueError(f"training.patchtst.patch_length ({self.training.patchtst.patch_length}) must be "
                                 f"below the forecaster's context, features.lags - features.lags // 2 ({context})")
        return self

    @model_validator(mode="after")
    def _vertex_registry_is_set(self) -> Config:
        if self.training.registry == "vertex":
            if self.model.vertex is None or not self.model.vertex.staging_bucket:
                raise ValueError("model.vertex.staging_bucket: training.registry is vertex: set model.vertex "
                                 "(project, location, staging_bucket) where versions are uploaded")
            if self.training.vertex_serving is None:
                raise ValueError("training.vertex_serving.image_uri: training.registry is vertex: set the serving "
                                 "container versions are uploaded with")
        return self

    @model_validator(mode="after")
    def _shadow_is_recorded(self) -> Config:
        if self.model.shadow and not any("shadow_predictions" in sink.results for sink in self.sinks.values()):
            raise ValueError("model.shadow: no sink writes shadow_predictions (add it to a sink's results)")
        return self

    @model_validator(mode="after")
    def _runs_on_dataflow(self) -> Config:
        if self.on_dataflow:
            check_dataflow_deployment(self)
        return self

    @model_validator(mode="after")
    def _sinks_can_be_built(self) -> "Config":
        """Sinks that default from the deployment (an MQTT sink sharing the source's broker) fail here, at load."""
        self.build_sinks()
        return self

    def build_sinks(self) -> dict[str, Sink]:
        """The configured sinks by name, each from the factory its kind registered; errors name the sink."""
        context = SinkContext(self.work_path, self.source)
        sinks = {}
        for name, settings in self.sinks.items():
            try:
                sinks[name] = SINKS[type(settings)](settings, context)
            except ValueError as exc:
                raise ValueError(f"sinks.{name}.{exc}") from None
        return sinks

    @property
    def on_dataflow(self) -> bool:
        """Whether the stream runs on Dataflow: ``pipeline_options.runner`` names it, or names no runner and a
        ``dataflow`` section is set."""
        runner = self.pipeline_options.get("runner")
        return runner in DATAFLOW_RUNNERS or (runner is None and self.dataflow is not None)

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir).expanduser()

    @property
    def tracking_uri(self) -> str:
        return self.model.tracking_uri or f"sqlite:///{(self.work_path / 'mlflow.db').resolve()}"


def with_default_kinds(data: Any) -> Any:
    """A ``model`` section without ``handler`` is torch; a ``source`` without ``kind`` is a replay."""
    if isinstance(data, Mapping):
        data = dict(data)
        for section, (discriminator, default) in DEFAULT_KINDS.items():
            if isinstance(data.get(section), Mapping) and discriminator not in data[section]:
                data[section] = {discriminator: default, **data[section]}
    return data


def _kind_union(classes: tuple[type, ...], discriminator: str) -> Any:
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[classes], Field(discriminator=discriminator)]


@functools.cache
def _config_model(handlers: tuple[type, ...], sources: tuple[type, ...], sinks: tuple[type, ...]) -> type[Config]:
    defaults = Config.model_fields
    return create_model(
        "Config", __base__=Config, __module__=__name__,
        model=(_kind_union(handlers, "handler"), defaults["model"].default),
        source=(_kind_union(sources, "kind"), defaults["source"].default),
        sinks=(dict[str, _kind_union(sinks, "kind")], Field(default_factory=defaults["sinks"].default_factory)),
    )


def config_model() -> type[Config]:
    """The Config model over the kinds registered now."""
    return _config_model(tuple(HANDLERS), tuple(SOURCES), tuple(SINKS))


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
    node[leaf] = value


def _field(loc: tuple, data: Any) -> str:
    """The dotted field of an error location, without the tag (``TAGS``) pydantic inserts after a union's field."""
    parts, node, tag_seen = [], data, False
    for part in loc:
        tag = next((node[key] for key in TAGS if isinstance(node.get(key), str)), None) \
            if isinstance(node, Mapping) else None
        if tag is not None and part == tag and not tag_seen:
            tag_seen = True
            continue
        parts.append(str(part))
        node, tag_seen = (node.get(part) if isinstance(node, Mapping) else None), False
    return ".".join(parts) or "<root>"


def _describe(error: ValidationError, data: Any) -> str:
    lines = []
    for item in error.errors():
        field = _field(item["loc"], data)
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field += f".{item['ctx']['discriminator'].strip(chr(39))}"
        lines.append(f"  {field}: {item['msg']}")
    return "invalid config:\n" + "\n".join(lines)


def validate_config(data: Mapping[str, Any]) -> Config:
    """A config from a mapping (as read from YAML); raises ConfigError naming each bad field."""
    try:
        return config_model().model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, with_default_kinds(data))) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read, override and validate a config; raises ConfigError naming each bad field."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return validate_config(data)


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` from the command line; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"--set expects FIELD=VALUE, got {text!r}")
    dotted, raw = text.split("=", 1)
    try:
        return dotted.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"--set {dotted.strip()}: the value is not valid YAML ({problem})") from None
