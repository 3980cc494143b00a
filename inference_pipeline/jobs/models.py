"""``iotml models list | show | promote``: the registry as an operator sees it, and the one command that moves an
alias (a stream serving ``models:/<name>@<alias>`` follows it within ``model.watch_s``)."""
from __future__ import annotations

import json
import time

from inference_pipeline.config import Config
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
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def describe(info: VersionInfo) -> str:
    """A version as JSON: identity, aliases, source, tags and every metric of its run."""
    return json.dumps({"name": info.name, "version": info.version, "aliases": list(info.aliases),
                       "created": _when(info.created), "run_id": info.run_id, "source": info.source,
                       "tags": info.tags, "metrics": info.metrics}, indent=2, sort_keys=True)


def show(config: Config, name: str, version: str | None) -> str:
    return describe(show_version(config.tracking_uri, name, version))


def promote(config: Config, name: str, version: str, alias: str = CHAMPION) -> str:
    previous = promote_version(config.tracking_uri, name, version, alias)
    was = f"v{previous}" if previous else "nothing"
    return f"{name}@{alias}: v{version} (was {was}); streams serving {name}@{alias} switch within model.watch_s"
