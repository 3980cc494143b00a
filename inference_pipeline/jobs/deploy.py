"""``iotml deploy dataflow | stage-model`` and the Flex Template's launcher (docs/deploy.md).

- ``deploy dataflow``: launch the config's streaming job on Dataflow (``runtime.dataflow.launch``); with
  ``--dry-run`` build the whole job offline instead and write it as JSON.
- ``deploy stage-model``: copy the version ``model.uri`` names to ``dataflow.model_location``, where the workers
  read it.
- ``flex_template_main``: what the Flex Template's launcher image runs (``deploy/flex-template/launch.py``): the
  template's parameters (``flex_template_parser``, mirrored by ``deploy/flex-template/metadata.json``) select and
  override the config baked into the image; the Dataflow options the launcher passes override the config's.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from inference_pipeline.config import Config, load_config, parse_override
from inference_pipeline.runtime.dataflow import dry_run_job, launch, stage_model, write_job

LOG = logging.getLogger(__name__)
TEMPLATE_CONFIG = "/template/configs/dataflow.yaml"


def deploy_dataflow(config: Config, dry_run: bool = False, output: Path | None = None) -> str:
    """Launch (or, with ``dry_run``, build offline and write to ``output``) the streaming job; what to print."""
    if not dry_run:
        return launch(config).describe()
    job = dry_run_job(config)
    written = write_job(job, output or config.work_path / "dataflow-job.json")
    return f"dry run: job {job['name']} with {len(job['steps'])} steps written to {written} (nothing submitted)"


def stage(config: Config) -> str:
    return f"staged {config.model.uri} at {stage_model(config)}"


def flex_template_parser() -> argparse.ArgumentParser:
    """The Flex Template's parameters (``deploy/flex-template/metadata.json`` lists the same)."""
    parser = argparse.ArgumentParser(prog="launch.py", description="iotml streaming job (Flex Template)")
    parser.add_argument("--config", default=TEMPLATE_CONFIG, help="the deployment config in the launcher image")
    parser.add_argument("--model_uri", help="the model to serve (overrides model.uri; staged beforehand)")
    parser.add_argument("--subscription", help="projects/<project>/subscriptions/<name> (overrides "
                                               "source.subscription)")
    parser.add_argument("--overrides", help="FIELD=VALUE config overrides, separated by ';'")
    return parser


def flex_template_config(argv: Sequence[str]) -> Config:
    """The config a template launch runs: the image's config, the parameters' overrides, and the Dataflow options
    the launcher passes (as ``pipeline_options``)."""
    known, rest = flex_template_parser().parse_known_args(list(argv))
    overrides: dict[str, Any] = dict(parse_override(item) for item in (known.overrides or "").split(";")
                                     if item.strip())
    if known.model_uri:
        overrides["model.uri"] = known.model_uri
    if known.subscription:
        overrides["source.subscription"] = known.subscription
    passed = PipelineOptions(rest).get_all_options(drop_default=True)
    overrides.update({f"pipeline_options.{name}": value for name, value in passed.items()})
    return load_config(known.config, overrides)


def flex_template_main(argv: Sequence[str]) -> int:
    LOG.info("%s", launch(flex_template_config(argv)).describe())
    return 0
