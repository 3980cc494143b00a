"""Derived readings: quantities computed from each event's own readings before the window, for models whose physics
is a product or a difference of what the sensors send (mechanical power = torque x speed, a temperature rise).

Part of the feature spec, so training and streaming compute them by the same code (``FeatureSpec.featurise``); a
derived reading is then windowed, scaled and named (``<name>__<stat>``) like a sensor.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class DerivedReading(BaseModel):
    """``product``: ``of[0] * of[1] * scale``; ``difference``: ``(of[0] - of[1]) * scale``. A missing input gives a
    missing reading (imputed like a sensor's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    op: Literal["product", "difference"]
    of: tuple[str, str]
    scale: float = 1.0


def derive(values: np.ndarray, sensors: Sequence[str], derived: Sequence[DerivedReading]) -> np.ndarray:
    """(n, sensors) readings -> (n, sensors + derived): the sensors' columns, then each derived reading's."""
    if not derived:
        return values
    index = {name: i for i, name in enumerate(sensors)}
    columns = []
    for reading in derived:
        a, b = values[..., index[reading.of[0]]], values[..., index[reading.of[1]]]
        columns.append((a * b if reading.op == "product" else a - b) * reading.scale)
    return np.concatenate([values, np.stack(columns, axis=-1)], axis=-1)
