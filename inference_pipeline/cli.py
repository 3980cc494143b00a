"""``iotml``: simulate, train, stream, score, manage registered models and the main job ``run``."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from inference_pipeline.config import Config, ConfigError, load_config, parse_override
from inference_pipeline.connectors.mqtt.redact import redact as redact_secrets


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="deployment YAML (default configs/local.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field by dotted path, e.g. --set alerting.open_after=5")
    parser.add_argument("--work-dir", help="override work_dir")


def _config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Config:
    overrides = dict(parse_override(text) for text in args.overrides)
    if args.work_dir:
        overrides["work_dir"] = args.work_dir
    overrides.update({key: value for key, value in (extra or {}).items() if value is not None})
    return load_config(args.config, overrides)


def cmd_simulate(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs.main_job import simulate_to_file

    config = _config(args, {"simulation.devices": args.devices, "simulation.duration_s": args.duration,
                            "simulation.seed": args.seed, "simulation.fault_rate": args.fault_rate})
    if args.publish:
        return _publish(args, config)
    print(simulate_to_file(config.simulation, Path(args.output)))
    return 0


def _publish(args: argparse.Namespace, config: Config) -> int:
    from inference_pipeline.jobs.loadgen import publish_fleet, publisher_settings

    if not args.rate:
        raise ConfigError("--publish needs --rate (messages per second)")
    settings, prefix = publisher_settings(args.publish)
    sim = config.simulation
    report = publish_fleet(settings, prefix, args.rate, sim.devices, sim.duration_s, args.malformed_fraction,
                           sim.seed, sim.fault_rate, config.features.sensors, config.events.max_payload_bytes)
    print(json.dumps({"published": report.published, "malformed": report.malformed, "rate": round(report.rate, 1),
                      "seconds": round(report.finished - report.started, 2), "max_lag_s": round(report.max_lag_s, 3)}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs.main_job import train_from_tables

    config = _config(args)
    if bool(args.train_data) != bool(args.eval_data):
        raise ConfigError("give both --train-data and --eval-data, or neither (then the fleet is simulated)")
    run = train_from_tables(config, Path(args.train_data) if args.train_data else None,
                            Path(args.eval_data) if args.eval_data else None,
                            args.promote)
    registration = run.registration
    print(f"registered {registration.name} v{registration.version} (run {registration.run_id}); "
          f"champion: v{registration.champion_version} - {registration.reason}")
    print(json.dumps(run.metrics, indent=2))
    return 0


def cmd_train_defects(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs.defects import train_defect_classifier

    config = _config(args)
    run = train_defect_classifier(config, args.data, args.trees, args.promote)
    registration = run.registration
    print(f"registered {registration.name} v{registration.version} (run {registration.run_id}); "
          f"champion: v{registration.champion_version} - {registration.reason}; events to replay: {run.events}")
    print(json.dumps(run.metrics, indent=2))
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from inference_pipeline.runtime.run import run_stream

    config = _config(args, {"source.path": args.source})
    return run_stream(config)


def cmd_models(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs import models
    from inference_pipeline.jobs.main_job import model_name

    config = _config(args)
    if args.action == "list":
        print(models.versions_table(config, args.name))
    elif args.action == "show":
        print(models.show(config, args.name or model_name(config), args.version))
    elif args.action == "compare":
        print(models.compare_versions(config, args.last, args.challenger, args.db, args.plot))
    else:
        print(models.promote(config, args.name, args.version, args.alias, args.force, args.db))
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs.registry_server import ServerOptions, serve

    artifacts = args.artifacts or _config(args).work_path / "registry-artifacts"
    return serve(ServerOptions(artifacts, args.host, args.port, args.workers, args.db_name, args.basic_auth))


def cmd_features(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs.features import push_device_metadata

    config = _config(args)
    written = push_device_metadata(config, args.source_file)
    print(f"pushed the metadata of {written} devices from {args.source_file} to the {config.enrichment.store.store} "
          "online store")
    return 0


def cmd_vertex(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs import vertex

    config = _config(args)
    if args.action == "upload":
        print(vertex.describe_versions(vertex.upload(config, args.name, args.version, args.image)))
        return 0
    deployment = vertex.deploy(config, args.model, endpoint=args.endpoint, endpoint_display_name=args.endpoint_name,
                               machine_type=args.machine_type, accelerator_type=args.accelerator_type,
                               accelerator_count=args.accelerator_count, min_replicas=args.min_replicas,
                               max_replicas=args.max_replicas, traffic_percentage=args.traffic_percentage)
    print(vertex.describe_deployment(config, deployment, args.model))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs import deploy

    config = _config(args, {"dataflow.update": True if getattr(args, "update", False) else None})
    if args.action == "stage-model":
        print(deploy.stage(config))
    else:
        print(deploy.deploy_dataflow(config, args.dry_run, args.output))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs.backfill import score_path

    columns = [c.strip() for c in args.value_columns.split(",")] if args.value_columns else None
    written = score_path(Path(args.input), Path(args.output), args.timestamp_column, columns, args.warmup_rows)
    print(f"scored {len(written)} file(s) into {args.output}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from inference_pipeline.jobs.benchmark import DEFAULT_CONFIG, run_benchmark

    if args.config is None:
        args.config = DEFAULT_CONFIG
    preset = None if args.preset == "csv" else args.preset
    result = run_benchmark(_config(args), Path(args.data), preset, args.train_rows, args.timestamp_column,
                           args.label_column)
    print(result.text)
    print(f"plot: {result.plot}")
    if args.json:  # the published protocol's figures; benchmark.json beside the plot has the event-wise ones too
        print(json.dumps({key: result.summary[key] for key in ("f1", "far_pct", "mar_pct", "runs", "test_rows")}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from inference_pipeline.evaluation.report import format_summary
    from inference_pipeline.jobs.main_job import run_main_job

    config = _config(args, {"simulation.devices": args.devices, "simulation.duration_s": args.duration})
    summary = run_main_job(config, promote=args.promote)
    print(format_summary(summary))
    return 0 if summary["events"]["balanced"] else 1


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="iotml", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="write a labelled simulated fleet dataset")
    _common(simulate)
    simulate.add_argument("--output", default="work/data/fleet.parquet", help=".parquet or .csv")
    simulate.add_argument("--devices", type=int)
    simulate.add_argument("--duration", type=float, help="seconds of simulated time")
    simulate.add_argument("--seed", type=int)
    simulate.add_argument("--fault-rate", type=float, help="faults per device per hour (0: normal data only)")
    simulate.add_argument("--publish", metavar="URL",
                          help="publish live to mqtt[s]://HOST:PORT/TOPIC-PREFIX instead of writing a file "
                               "(--duration: seconds of publishing; password from IOTML_MQTT_PASSWORD)")
    simulate.add_argument("--rate", type=float, help="with --publish: messages per second")
    simulate.add_argument("--malformed-fraction", type=float, default=0.0,
                          help="with --publish: share of malformed messages (dead-letter test)")
    simulate.set_defaults(func=cmd_simulate)

    train = commands.add_parser("train", help="train, evaluate and register a model version")
    _common(train)
    train.add_argument("--train-data", help="fault-free training table (.parquet/.csv)")
    train.add_argument("--eval-data", help="labelled evaluation table (.parquet/.csv, with a label column)")
    train.add_argument("--promote", action="store_true", help="move the champion alias even if not better")
    train.set_defaults(func=cmd_train)

    defects = commands.add_parser("train-defects", help="train, backtest and register the AI4I failure classifier "
                                                        "(use --config configs/ai4i.yaml)")
    _common(defects)
    defects.add_argument("--data", required=True, help="the AI4I 2020 csv or its folder")
    defects.add_argument("--trees", type=int, default=300, help="trees per random forest")
    defects.add_argument("--promote", action="store_true", help="move the champion alias even if not better")
    defects.set_defaults(func=cmd_train_defects)

    stream = commands.add_parser("stream", help="run the streaming pipeline on the configured source")
    _common(stream)
    stream.add_argument("--source", help="override source.path (replay file)")
    stream.set_defaults(func=cmd_stream)

    models = commands.add_parser("models", help="registered model versions: list, show, promote")
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every registered version with its aliases and metrics")
    listing.add_argument("name", nargs="?", help="one registered model (default: all)")
    shown = actions.add_parser("show", help="one version as JSON (default: the config's model at @champion)")
    shown.add_argument("name", nargs="?")
    shown.add_argument("version", nargs="?")
    promoted = actions.add_parser("promote", help="move an alias to a version; streams on that alias follow it")
    promoted.add_argument("name")
    promoted.add_argument("version")
    promoted.add_argument("--alias", default="champion")
    promoted.add_argument("--force", action="store_true", help="skip the model.min_shadow_s rule")
    compared = actions.add_parser("compare", help="champion vs challenger (model.shadow) over a stream's results: "
                                                  "agreement, score distributions, alert counts, a plot")
    compared.add_argument("--last", type=float, default=3600.0, help="seconds of results back from now")
    compared.add_argument("--challenger", help="<name>/<version> (default: any shadow version)")
    compared.add_argument("--plot", type=Path, help="PNG path (default <work_dir>/shadow_comparison.png)")
    for action in (promoted, compared):
        action.add_argument("--db", type=Path, help="results database (default: the config's SQLite sink)")
    for action in (listing, shown, promoted, compared):
        _common(action)
    models.set_defaults(func=cmd_models)

    registry = commands.add_parser("registry", help="the MLflow registry as a server")
    served = registry.add_subparsers(dest="action", required=True).add_parser(
        "serve", help="MLflow tracking server on PostgreSQL (IOTML_REGISTRY_DB or PG* variables), artifacts proxied")
    _common(served)
    served.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    served.add_argument("--port", type=int, default=5000)
    served.add_argument("--artifacts", type=Path, help="artifact folder (default <work_dir>/registry-artifacts)")
    served.add_argument("--db-name", help="PostgreSQL database, created if missing (default: the URI's, else "
                                          "iotml_registry)")
    served.add_argument("--workers", type=int, default=4, help="server worker processes")
    served.add_argument("--basic-auth", action="store_true",
                        help="MLflow's basic-auth app (MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_ADMIN_PASSWORD)")
    registry.set_defaults(func=cmd_registry)

    features = commands.add_parser("features", help="device metadata in the online feature store (enrichment)")
    pushed = features.add_subparsers(dest="action", required=True).add_parser(
        "push", help="load a device metadata table (CSV or Parquet, one row per device) into the online store")
    _common(pushed)
    pushed.add_argument("--from", dest="source_file", required=True, help="the device metadata file")
    pushed.set_defaults(func=cmd_features)

    vertex = commands.add_parser("vertex", help="Vertex AI Model Registry and endpoints (model.vertex)")
    steps = vertex.add_subparsers(dest="action", required=True)
    uploaded = steps.add_parser("upload", help="put a registered version into the Vertex AI Model Registry, its "
                                               "MLflow aliases mirrored")
    uploaded.add_argument("name", help="registered model name")
    uploaded.add_argument("version", nargs="?", help="MLflow version (default: the champion)")
    uploaded.add_argument("--image", help="serving container image (default: training.vertex_serving.image_uri)")
    deployed = steps.add_parser("deploy", help="put a Vertex model version on an endpoint (below 100 %%: a canary)")
    deployed.add_argument("model", help="vertex:<model>@<alias> or vertex:<model>/<version id>")
    target = deployed.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", help="an existing endpoint's id or resource name")
    target.add_argument("--endpoint-name", help="the endpoint of this display name (created when there is none)")
    deployed.add_argument("--machine-type", default="n1-standard-4")
    deployed.add_argument("--accelerator-type", help="e.g. NVIDIA_TESLA_T4, NVIDIA_L4")
    deployed.add_argument("--accelerator-count", type=int, default=0)
    deployed.add_argument("--min-replicas", type=int, default=1)
    deployed.add_argument("--max-replicas", type=int, default=1)
    deployed.add_argument("--traffic-percentage", type=int, default=100,
                          help="share of the endpoint's traffic for this version; the rest stays with what it serves")
    for step in (uploaded, deployed):
        _common(step)
    vertex.set_defaults(func=cmd_vertex)

    deploy = commands.add_parser("deploy", help="the streaming job on Dataflow (docs/deploy.md)")
    targets = deploy.add_subparsers(dest="action", required=True)
    dataflow = targets.add_parser("dataflow", help="check, submit and return with the job id and console URL "
                                                   "(configs/dataflow.yaml)")
    dataflow.add_argument("--dry-run", action="store_true", help="build the whole job offline, submit nothing")
    dataflow.add_argument("--output", type=Path, help="with --dry-run: the job JSON (default "
                                                      "<work_dir>/dataflow-job.json)")
    dataflow.add_argument("--update", action="store_true", help="replace the running job of dataflow.job_name "
                                                                "(dataflow.transform_name_mapping: renamed steps)")
    staged = targets.add_parser("stage-model", help="copy the model.uri version to dataflow.model_location for the "
                                                    "workers")
    for target in (dataflow, staged):
        _common(target)
    deploy.set_defaults(func=cmd_deploy)

    score = commands.add_parser("score", help="causal backfill scoring of CSV time series (unsupervised)")
    score.add_argument("--input", required=True, help="a CSV file or a folder of CSVs")
    score.add_argument("--output", required=True, help="a CSV file, or a folder mirroring --input")
    score.add_argument("--timestamp-column")
    score.add_argument("--value-columns", help="comma-separated; default: every numeric column")
    score.add_argument("--warmup-rows", type=int, default=None, help="rows per file used to warm up (default 400)")
    score.set_defaults(func=cmd_score)

    bench = commands.add_parser("benchmark", help="labelled series through the streaming pipeline: F1, FAR, MAR, "
                                                  "events, delays (a preset or any labelled CSV)")
    _common(bench)
    bench.add_argument("preset", choices=["skab", "csv"], help="skab: SKAB's outlier protocol and leaderboard; "
                                                              "csv: any labelled CSV or folder of CSVs")
    bench.add_argument("--data", required=True, help="a labelled CSV file or a folder of them")
    bench.add_argument("--train-rows", type=int, default=None, help="training rows per series (default 400)")
    bench.add_argument("--timestamp-column")
    bench.add_argument("--label-column", help="0/1 per row (default: a column named anomaly, label, ...)")
    bench.add_argument("--json", action="store_true", help="last line: the figures as JSON")
    bench.set_defaults(func=cmd_benchmark)

    run = commands.add_parser("run", help="the main job: simulate, train, register, stream, report")
    _common(run)
    run.add_argument("--devices", type=int)
    run.add_argument("--duration", type=float, help="seconds of simulated stream")
    run.add_argument("--promote", action="store_true")
    run.set_defaults(func=cmd_run)
    return root


# Environment variables holding secrets: the MQTT password and MLflow's tracking credentials.
_SECRET_VARIABLES = ("IOTML_MQTT_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def redact(text: str) -> str:
    """``text`` with URL passwords and the values of the secret environment variables replaced by ``***``."""
    return redact_secrets(text, [os.environ.get(variable) for variable in _SECRET_VARIABLES])


class _RedactSecrets(logging.Filter):
    """A last line of defence: no log record leaves with a credential in it (message, traceback or stack)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            trace = logging.Formatter().formatException(record.exc_info)
            if redact(trace) != trace:
                record.exc_text = redact(trace)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _RedactedRecords:
    """A log record factory masking every record as it is made: whichever logger makes it and whichever handler
    writes it (MLflow gives ``mlflow``, ``alembic`` and ``sqlalchemy.engine`` handlers of their own, and code may add
    handlers later), no logging filter could see them all."""

    def __init__(self, make_record: Callable[..., logging.LogRecord]):
        self._make_record = make_record

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._make_record(*args, **kwargs)
        with contextlib.suppress(Exception):  # a record that cannot be formatted fails in its handler as before
            _RedactSecrets().filter(record)
        return record


def _report_uncaught(kind: type[BaseException], value: BaseException, trace: TracebackType | None) -> None:
    """Uncaught errors' tracebacks, masked (MLflow's errors quote the tracking URI whole)."""
    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, trace))))


def _mask_secrets() -> None:
    """Mask credentials in log records, warnings (routed through logging) and uncaught tracebacks; and keep MLflow
    from printing run links, which carry the tracking URI's password."""
    if not isinstance(logging.getLogRecordFactory(), _RedactedRecords):
        logging.setLogRecordFactory(_RedactedRecords(logging.getLogRecordFactory()))
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING)
    sys.excepthook = _report_uncaught
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _mask_secrets()
    for ours in ("inference_pipeline", "training", "features", "model_handlers"):
        logging.getLogger(ours).setLevel(logging.INFO)
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ConnectionError, FileNotFoundError, LookupError, ValueError) as exc:
        print(redact(f"iotml {args.command}: error: {exc}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
