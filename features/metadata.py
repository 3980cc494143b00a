"""Device metadata as model features: the fields a feature store serves per device (line, machine type, install
date, last service, rated limits) and the one function turning a device's record into feature columns, applied by
training (records from a metadata file) and by the stream (records from the enrichment step) alike.

A field is ``number`` (the value as is), ``days_since`` (the value is a date or epoch seconds; the feature is the
days from it to each event's time, so "days since last service" grows with the stream and means the same in
training) or ``category`` (one column per listed category, ``meta__<field>__<category>``, 1 for the device's;
an unlisted value sets none).
A missing or unreadable value takes the field's ``default`` (for ``days_since``: a number of days).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

DAY_S = 86_400.0
PREFIX = "meta__"
ENTITY = "device_id"


class MetadataField(BaseModel):
    """One device metadata field, named as the feature store names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: Literal["number", "days_since", "category"] = "number"
    categories: tuple[str, ...] = ()
    default: float | str = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> "MetadataField":
        if self.kind == "category":
            if not self.categories:
                raise ValueError(f"metadata field {self.name}: a category field lists its categories")
            if len(set(self.columns)) != len(self.categories):
                raise ValueError(f"metadata field {self.name}: categories {list(self.categories)} are not distinct "
                                 "once reduced to letters, digits and underscores (their column names)")
            if str(self.default) not in self.categories:
                raise ValueError(f"metadata field {self.name}: default {self.default!r} is not one of its categories")
        else:
            if self.categories:
                raise ValueError(f"metadata field {self.name}: only a category field lists categories")
            if not isinstance(self.default, (int, float)) or not math.isfinite(self.default):
                raise ValueError(f"metadata field {self.name}: the default of a {self.kind} field is a finite number")
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        if self.kind == "category":
            return tuple(f"{PREFIX}{self.name}__{re.sub(r'[^A-Za-z0-9_]', '_', category)}"
                         for category in self.categories)
        return (f"{PREFIX}{self.name}",)


def metadata_names(fields: Sequence[MetadataField]) -> list[str]:
    """The feature columns of ``fields``, in order (after the window features)."""
    return [column for field in fields for column in field.columns]


def epoch_seconds(value: Any) -> float | None:
    """A date or time (ISO text, a datetime, or epoch seconds) as epoch seconds; None if unreadable."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    number = _number(value)
    if number is not None:
        return number
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if pd.isna(stamp):
        return None
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).timestamp()


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metadata_matrix(fields: Sequence[MetadataField], record: Mapping[str, Any] | None,
                    ts: np.ndarray) -> np.ndarray:
    """(n, columns) float32: each event's metadata features from its device's ``record`` (None: every default)."""
    record = record or {}
    columns = []
    for field in fields:
        value = record.get(field.name)
        if field.kind == "number":
            number = _number(value)
            columns.append(np.full(len(ts), field.default if number is None else number))
        elif field.kind == "days_since":
            since = epoch_seconds(value) if value is not None else None
            columns.append(np.full(len(ts), float(field.default)) if since is None else (ts - since) / DAY_S)
        else:
            chosen = str(value) if value is not None else str(field.default)
            columns.extend(np.full(len(ts), float(chosen == category)) for category in field.categories)
    if not columns:
        return np.empty((len(ts), 0), dtype=np.float32)
    return np.stack(columns, axis=1).astype(np.float32)


def without_entity(response: Mapping[str, Any]) -> dict[str, Any]:
    """A store's answer for a device as its record: every field but the device id it was looked up by."""
    return {name: value for name, value in response.items() if name != ENTITY}


def missing_fields(fields: Sequence[MetadataField], record: Mapping[str, Any] | None) -> list[str]:
    """The fields ``record`` lacks (None or absent), which take their defaults."""
    record = record or {}
    return [field.name for field in fields if record.get(field.name) is None]


def read_metadata(path: str | Path, fields: Sequence[MetadataField]) -> pd.DataFrame:
    """A device metadata table (CSV or Parquet): one row per device, ``device_id`` and each field's column.
    Raises ValueError naming what is wrong (missing columns, repeated devices)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"device metadata file not found: {path}")
    frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    absent = [name for name in (ENTITY, *(field.name for field in fields)) if name not in frame.columns]
    if absent:
        raise ValueError(f"device metadata file {path} lacks columns {absent}")
    frame = frame.astype({ENTITY: str})
    repeated = sorted(frame.loc[frame[ENTITY].duplicated(), ENTITY].unique())
    if repeated:
        raise ValueError(f"device metadata file {path} lists devices more than once: {repeated[:5]}")
    return frame


def metadata_records(frame: pd.DataFrame, fields: Sequence[MetadataField]) -> dict[str, dict[str, Any]]:
    """device_id -> its record (the fields' values; missing cells as None)."""
    names = [field.name for field in fields]
    values = frame[names].astype(object).where(frame[names].notna(), None)
    return dict(zip(frame[ENTITY], values.to_dict("records")))
