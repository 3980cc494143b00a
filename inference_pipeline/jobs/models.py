"""``iotml models list | show | promote | compare``: the registry as an operator sees it, the one command that moves
an alias (a stream serving ``models:/<name>@<alias>`` follows it within ``model.watch_s``; ``model.min_shadow_s``
can require the version to have scored in shadow first), and champion vs challenger from a stream's results."""
from __future__ import annotations

import json
import time
from pathlib import Path

from inference_pipeline.config import Config
from inference_pipeline.connectors.sqlite import results_path
from inference_pipeline.evaluation.report import text_table
from inference_pipeline.evaluation.shadow import compare, comparison_plot, comparison_table, shadow_seconds
from training.register import CHAMPION, VersionInfo, list_versions, promote_version, show_version

SHOWN_METRICS = ("eval_f1", "eval_precision", "eval_recall", "threshold", "pr_auc", "f1")


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def versions_table(config: Config, name: str | None) -> str:
    """One line per registered version: name, version, aliases, created, the headline metrics its run logged."""
    found = list_versions(config.tracking_uri, name)
    if not found:
        return f"no registered versions{' of ' + name if name else ''} at {config.tracking_uri}"
    metrics = [m for m in SHOWN_METRICS if any(m in v.metrics for v in found)]
    header = ["name", "version", "aliases", "created", *metrics]
    rows = [[v.name, v.version, ",".join(v.aliases) or "-", _when(v.created),
             *(f"{v.metrics[m]:.4f}" if m in v.metrics else "-" for m in metrics)] for v in found]
    return text_table([header, *rows])


def describe(info: VersionInfo) -> str:
    """A version as JSON: identity, aliases, source, tags and every metric of its run."""
    return json.dumps({"name": info.name, "version": info.version, "aliases": list(info.aliases),
                       "created": _when(info.created), "run_id": info.run_id, "source": info.source,
                       "tags": info.tags, "metrics": info.metrics}, indent=2, sort_keys=True)


def show(config: Config, name: str, version: str | None) -> str:
    return describe(show_version(config.tracking_uri, name, version))


def _results(config: Config, db: Path | None) -> Path:
    found = db or results_path(config.sinks, config.work_path)
    if found is None or not Path(found).is_file():
        raise FileNotFoundError(f"no results database at {found} (give --db, or a config whose SQLite sink a stream "
                                f"wrote)")
    return Path(found)


def check_shadow_time(config: Config, name: str, version: str, db: Path | None = None) -> None:
    """``model.min_shadow_s``: refuse (ValueError, naming the time run and required) a version that has not scored
    in shadow that long in the results database."""
    required = config.model.min_shadow_s
    if not required:
        return
    ran = shadow_seconds(_results(config, db), f"{name}/{version}")
    if ran < required:
        raise ValueError(f"{name} v{version} has scored in shadow for {ran:.0f} s, model.min_shadow_s requires "
                         f"{required:.0f} s: serve it as model.shadow first (or promote with --force)")


def promote(config: Config, name: str, version: str, alias: str = CHAMPION, force: bool = False,
            db: Path | None = None) -> str:
    if not force:
        check_shadow_time(config, name, version, db)
    previous = promote_version(config.tracking_uri, name, version, alias)
    was = f"v{previous}" if previous else "nothing"
    return f"{name}@{alias}: v{version} (was {was}); streams serving {name}@{alias} switch within model.watch_s"


def compare_versions(config: Config, last_s: float, challenger: str | None = None, db: Path | None = None,
                     plot: Path | None = None) -> str:
    """Champion vs challenger over the last ``last_s`` seconds of a stream's results: the table, and where the plot
    went."""
    until = time.time()
    alerting = config.alerting
    comparison, pairs = compare(_results(config, db), until - last_s, until, alerting.open_after,
                                alerting.close_after, challenger)
    if not comparison.events:
        return (f"no events scored by both champion and challenger in the last {last_s:.0f} s (is model.shadow set "
                f"on the stream?)")
    path = comparison_plot(comparison, pairs, alerting.threshold, plot or config.work_path / "shadow_comparison.png")
    return f"{comparison_table(comparison, alerting.open_after)}\nplot: {path}"
