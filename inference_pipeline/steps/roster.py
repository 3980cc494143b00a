"""Which devices the stream is tracking, so per-device state stays bounded and a device that falls silent is noticed.

The local runner fires no processing-time timers, so idle devices cannot be visited by their own state. Instead the
parse step keeps this roster of the devices it has seen, by wall-clock time of their last event, and sends each
device's keyed state a notice (an empty ``EventBatch`` carrying a ``DeviceNotice``) when the device has been silent
for ``silent_after_s`` (an incident ``device_silent`` opens) or ``expire_after_s`` (its state is dropped: it warms
up again if it returns), or when more than ``max_devices`` are tracked (the longest silent is dropped first). Live
sources send empty batches while idle, so notices go out when nothing arrives at all.

A notice is a hint: the keyed steps check it against the device's own last event and ignore one that a newer event
has overtaken (on a runner with several parse workers each roster sees only part of the traffic). Written here
because Beam offers no bounded per-key state expiry without timers.
"""
from __future__ import annotations

import collections
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.schema import DeviceNotice


class FleetSettings(BaseModel):
    """``max_devices``: devices holding state at most (beyond it the longest silent is dropped);
    ``silent_after_s``: silence that raises ``device_silent`` (None: never); ``expire_after_s``: silence after which
    a device's state is dropped; ``check_every_s``: how often the roster looks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_devices: int = Field(100_000, ge=1)
    silent_after_s: float | None = Field(300.0, gt=0)
    expire_after_s: float = Field(86_400.0, gt=0)
    check_every_s: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _silent_before_expiry(self) -> "FleetSettings":
        if self.silent_after_s is not None and self.silent_after_s >= self.expire_after_s:
            raise ValueError("silent_after_s must be shorter than expire_after_s")
        return self


class DeviceRoster:
    """Devices by the wall-clock time of their last event: ``active`` ones, then those already reported silent."""

    def __init__(self, settings: FleetSettings):
        self._settings = settings
        self._active: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._silent: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._checked_at = float("-inf")

    def __len__(self) -> int:
        return len(self._active) + len(self._silent)

    def seen(self, device_id: str, at: float) -> list[tuple[str, DeviceNotice]]:
        """Record a device's event received at ``at``; expiry notices for the devices it pushes over the cap (to
        send before the device's events, so no step ever holds more than ``max_devices``)."""
        self._silent.pop(device_id, None)
        self._active[device_id] = max(at, self._active.get(device_id, at))
        self._active.move_to_end(device_id)
        return [self._drop() for _ in range(len(self) - self._settings.max_devices)]

    def due(self, now: float) -> Iterator[tuple[str, DeviceNotice]]:
        """Every ``check_every_s``: notices for the devices silent or expired by ``now``."""
        if now - self._checked_at < self._settings.check_every_s:
            return
        self._checked_at = now
        silent_after = self._settings.silent_after_s
        while silent_after is not None and self._active and now - next(iter(self._active.values())) >= silent_after:
            device_id, last = self._active.popitem(last=False)
            self._silent[device_id] = last
            yield device_id, DeviceNotice(DeviceNotice.SILENT, last)
        expire_after = self._settings.expire_after_s
        for queue in (self._silent, self._active):
            while queue and now - next(iter(queue.values())) >= expire_after:
                device_id, last = queue.popitem(last=False)
                yield device_id, DeviceNotice(DeviceNotice.EXPIRE, last)

    def _drop(self) -> tuple[str, DeviceNotice]:
        queue = self._silent or self._active
        device_id, last = queue.popitem(last=False)
        return device_id, DeviceNotice(DeviceNotice.EXPIRE, last)
