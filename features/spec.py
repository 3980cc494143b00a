"""The feature spec (which sensors, window and statistics) and the MLTransform that scales its output."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from features.derived import DerivedReading, derive
from features.metadata import MetadataField, metadata_matrix, metadata_names
from features.window import STATS, Featurised, WindowState, advance, feature_names, lag_names


class FeatureSpec(BaseModel):
    """What the model sees: the sensors read from each event, the readings derived from them (``derived``), and the
    rolling window summarising each channel (sensors, then derived readings).

    ``max_gap_s``: a longer silence between two events of a device restarts its window (None: never; training
    sets it to ten times the median sampling interval of its data when not configured). ``fill_values``: per sensor,
    what a missing reading is imputed with before the device has reported that sensor (training sets the sensor's
    median; None: 0). ``lags``: also the newest ``lags`` readings of each channel as features (``<channel>__lag<k>``,
    k steps back), for sequence models. ``metadata``: device metadata fields joined to every event (by the enrichment
    step in the stream, from the metadata file in training) as features after the window's (``features.metadata``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensors: tuple[str, ...] = Field(min_length=1)
    window: int = Field(30, ge=2, le=10_000)
    stats: tuple[str, ...] = STATS
    max_gap_s: float | None = Field(None, gt=0)
    fill_values: tuple[float, ...] | None = None
    derived: tuple[DerivedReading, ...] = ()
    lags: int = Field(0, ge=0)
    metadata: tuple[MetadataField, ...] = ()

    @field_validator("stats")
    @classmethod
    def _known_stats(cls, stats: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(stats) - set(STATS))
        if unknown:
            raise ValueError(f"unknown statistics {unknown}; choose from {list(STATS)}")
        return stats

    @field_validator("sensors")
    @classmethod
    def _distinct_sensors(cls, sensors: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(sensors)) != len(sensors):
            raise ValueError("sensor names must be distinct")
        return sensors

    @field_validator("fill_values")
    @classmethod
    def _finite_fill(cls, fill: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if fill is not None and not np.isfinite(fill).all():
            raise ValueError("fill values must be finite")
        return fill

    @model_validator(mode="after")
    def _derived_from_sensors(self) -> "FeatureSpec":
        names = [reading.name for reading in self.derived]
        clashing = sorted(set(names) & set(self.sensors)) + sorted({n for n in names if names.count(n) > 1})
        if clashing:
            raise ValueError(f"derived readings {clashing} repeat a sensor's or another derived reading's name")
        unknown = sorted({name for reading in self.derived for name in reading.of} - set(self.sensors))
        if unknown:
            raise ValueError(f"derived readings use {unknown}, which are not sensors")
        return self

    @model_validator(mode="after")
    def _lags_in_window(self) -> "FeatureSpec":
        if self.lags > self.window:
            raise ValueError(f"lags ({self.lags}) cannot exceed the window ({self.window})")
        return self

    @model_validator(mode="after")
    def _fill_per_sensor(self) -> "FeatureSpec":
        if self.fill_values is not None and len(self.fill_values) != len(self.sensors):
            raise ValueError(f"fill_values has {len(self.fill_values)} values for {len(self.sensors)} sensors")
        return self

    @property
    def channels(self) -> tuple[str, ...]:
        """What the window summarises: the sensors, then the derived readings."""
        return self.sensors + tuple(reading.name for reading in self.derived)

    @property
    def summaries(self) -> tuple[str, ...]:
        """Per channel, in order: the statistics, then the lagged readings (``lag0`` .. ``lag<lags-1>``)."""
        return self.stats + lag_names(self.lags)

    @property
    def window_feature_names(self) -> list[str]:
        """The window's features: per channel, its summaries."""
        return feature_names(self.channels, self.summaries)

    @property
    def feature_names(self) -> list[str]:
        """What the model sees: the window's features, then the device metadata's."""
        return self.window_feature_names + metadata_names(self.metadata)

    def empty_state(self) -> WindowState:
        return WindowState.empty(len(self.channels))

    def featurise(self, state: WindowState, ts: np.ndarray, values: np.ndarray,
                  metadata: Mapping[str, Any] | None = None) -> Featurised:
        """A device's next events (in event-time order; ``values``: one column per sensor) and its metadata record
        -> features, imputed mask (per channel) and state: the one rule that training and streaming both apply
        (``features.derived.derive``, then ``features.window.advance``, then ``features.metadata``)."""
        fill = np.zeros(len(self.sensors)) if self.fill_values is None else np.asarray(self.fill_values, np.float64)
        out = advance(state, ts, derive(values, self.sensors, self.derived), self.window, self.summaries,
                      derive(fill, self.sensors, self.derived), self.max_gap_s)
        if not self.metadata:
            return out
        joined = np.concatenate([out.features, metadata_matrix(self.metadata, metadata, ts)], axis=1)
        return dataclasses.replace(out, features=joined)


def scaling_transform(spec: FeatureSpec):
    """The MLTransform scaling step: a z-score per feature column, fitted on training features."""
    from apache_beam.ml.transforms.tft import ScaleToZScore

    return ScaleToZScore(columns=spec.feature_names)

