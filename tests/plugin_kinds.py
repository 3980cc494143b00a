"""Connector and handler kinds defined by tests alone: an in-memory source, a JSON-lines file sink, and handlers that
return a constant score or raise. Registering them (``register``) is all a new kind needs."""
from __future__ import annotations

import time
from typing import Any, Literal

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from features.schema import RawEvent
from inference_pipeline.connectors import kinds as connector_kinds
from inference_pipeline.connectors.base import ConnectorSettings, Sink, SinkSettings, Source
from model_handlers import kinds as handler_kinds
from model_handlers.contract import ModelId, ModelOutput
from model_handlers.model_version import ModelVersion
from model_handlers.settings import ModelSettings


class ListSourceSettings(ConnectorSettings):
    """``payloads`` in batches of ``batch_size``, received now."""

    kind: Literal["list"] = "list"
    payloads: list[Any]
    batch_size: int = 100


def list_source(settings: ListSourceSettings, rules) -> Source:
    payloads, size = settings.payloads, settings.batch_size
    batches = [payloads[i:i + size] for i in range(0, len(payloads), size)]
    return Source(beam.Create(batches) | beam.Map(lambda batch: [RawEvent(p, time.time()) for p in batch]))


class FileSinkSettings(SinkSettings):
    kind: Literal["jsonfile"] = "jsonfile"
    folder: str


class JsonFileSink(Sink):
    def __init__(self, settings: FileSinkSettings, context):
        self._folder = settings.folder

    def write(self, tables):
        return beam.ParDo(_AppendJson(self._folder, tables))


class _AppendJson(beam.DoFn):
    def __init__(self, folder, tables):
        self._folder, self._tables = folder, tables

    def process(self, value):
        for table in self._tables:
            with open(f"{self._folder}/{table.name}.jsonl", "a") as handle:
                handle.writelines(message + "\n" for message in table.messages(value))


class ConstantSettings(ModelSettings):
    """A constant anomaly score; ``fail`` raises instead (the inference-error path)."""

    handler: Literal["constant"] = "constant"
    score: float
    fail: bool = False


class Constant:
    def __init__(self, score: float):
        self.score = score


class ConstantHandler(ModelHandler):
    def __init__(self, settings: ConstantSettings, version: ModelVersion):
        super().__init__()
        self._settings = settings
        self._id = ModelId("constant", "1", version.transform_id)

    def load_model(self):
        return Constant(self._settings.score)

    def run_inference(self, batch, model, inference_args=None):
        if self._settings.fail:
            raise RuntimeError("model exploded\nwhile scoring")
        scores = [np.full(len(item), model.score) for item in batch]
        return [PredictionResult(item, ModelOutput(score, score, self._id), str(self._id))
                for item, score in zip(batch, scores)]


def register(monkeypatch: pytest.MonkeyPatch) -> None:
    """Add the kinds above to the tables the config and the builder read (undone after the test)."""
    monkeypatch.setitem(connector_kinds.SOURCES, ListSourceSettings, list_source)
    monkeypatch.setitem(connector_kinds.SINKS, FileSinkSettings, JsonFileSink)
    monkeypatch.setitem(handler_kinds.HANDLERS, ConstantSettings, ConstantHandler)
