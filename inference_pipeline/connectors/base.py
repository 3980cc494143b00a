"""What a connector kind provides: a source reads raw payload batches, a sink writes result streams.

A connector kind is a settings class (a pydantic model whose ``kind: Literal["<kind>"]`` field names it in the
config) and a factory, registered in ``connectors.kinds`` (``SOURCES`` or ``SINKS``):

- source factory ``(settings, rules) -> Source``: ``read`` produces ``list[RawEvent]`` batches; ``live`` sources
  run with streaming options and may redeliver after a restart; ``stop(True)`` (if any) asks the stream to drain
  gracefully, ``stop(False)`` lets a new stream run again; ``check()`` (if any) raises ConnectionError when the
  external system cannot be reached, so a run fails at start instead of retrying forever.
- sink factory ``(settings, context) -> Sink``: ``write(tables)`` consumes a collection whose every value yields
  rows of each of ``tables`` (``results.TABLES``: the streams named in the settings' ``results``; predictions and
  alerts come together as ``DeviceResults``). A sink that records enough to resume from offers ``restore``
  (``results.Restore``: the ids it predicted and each device's state; a live stream restarted after a crash reads
  it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from features.schema import EventRules
from inference_pipeline.results import Restore, ResultStream, Table

if TYPE_CHECKING:
    import apache_beam as beam

class ConnectorSettings(BaseModel):
    """Base of every source and sink kind's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str


class SinkSettings(ConnectorSettings):
    """``results``: the result streams this sink writes."""

    results: tuple[ResultStream, ...] = ("predictions", "alerts", "dead_letters", "shadow_predictions")


@dataclasses.dataclass(frozen=True)
class Source:
    """A configured source."""

    read: beam.PTransform
    live: bool = False
    stop: Callable[[bool], None] | None = None
    check: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True)
class SinkContext:
    """What a sink may default from the deployment: the work folder and the source's settings."""

    work_path: Path
    source: Any


class Sink:
    """A configured sink; subclasses implement ``write``."""

    def write(self, tables: Sequence[Table]) -> beam.PTransform:
        raise NotImplementedError

    def restore(self, max_ids: int) -> Restore | None:
        """What this sink recorded to resume from, at most ``max_ids`` ids per device (None: it cannot tell)."""
        return None


SourceFactory = Callable[[Any, EventRules], Source]
SinkFactory = Callable[[Any, SinkContext], Sink]
