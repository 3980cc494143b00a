"""The feature spec (which sensors, window and statistics) and the MLTransform that scales its output."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from features.window import STATS, feature_names


class FeatureSpec(BaseModel):
    """What the model sees: the sensors read from each event and the rolling window summarising them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensors: tuple[str, ...] = Field(min_length=1)
    window: int = Field(30, ge=2, le=10_000)
    stats: tuple[str, ...] = STATS

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

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.sensors, self.stats)


def scaling_transform(spec: FeatureSpec):
    """The MLTransform scaling step: a z-score per feature column, fitted on training features."""
    from apache_beam.ml.transforms.tft import ScaleToZScore

    return ScaleToZScore(columns=spec.feature_names)

