"""Event time of an MQTT payload, found by a regular-expression scan of the payload's head rather than a JSON
parse: its ``ts`` field as epoch seconds or an ISO-8601 string, else the arrival time, capped at a bounded clock
skew ahead of arrival so a device with a bad clock cannot advance the watermark."""
from __future__ import annotations

import math
import re
from datetime import datetime, timezone

_TS_NUMBER = re.compile(rb'"ts"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')
_TS_STRING = re.compile(rb'"ts"\s*:\s*"([^"]{1,64})"')


def event_time(payload: bytes, received_at: float, max_clock_skew_s: float) -> float:
    """The payload's ``ts`` (epoch seconds or ISO-8601, found without a JSON parse), else ``received_at``.

    A time more than ``max_clock_skew_s`` ahead of ``received_at`` is capped there, so one bad clock cannot
    push the watermark into the future.
    """
    head = payload[:4096]
    ts: float | None = None
    match = _TS_NUMBER.search(head)
    if match:
        ts = float(match.group(1))
    else:
        match = _TS_STRING.search(head)
        if match:
            try:
                parsed = datetime.fromisoformat(match.group(1).decode().replace("Z", "+00:00"))
            except (ValueError, UnicodeDecodeError):
                parsed = None
            if parsed is not None:
                ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    if ts is None or not math.isfinite(ts) or ts < 0:
        return received_at
    return min(ts, received_at + max_clock_skew_s)
