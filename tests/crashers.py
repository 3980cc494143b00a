"""Single messages that used to crash the pipeline before it acknowledged them (so the broker resent them and the
pipeline crashed again on every restart), with the dead-letter reason each must get now."""
from __future__ import annotations

import json
from collections.abc import Sequence

from features.schema import DeadLetterReason


def crashers(device_id: str, sensors: Sequence[str], ts: float) -> list[tuple[str, str]]:
    """(payload, reason) pairs for a known device and a model's sensors, at a plausible event time ``ts``."""
    def event(ts_text: str, reading: str = "1.5", device: str = json.dumps(device_id), extra: str = "") -> str:
        readings = ", ".join(f'"{sensor}": {reading if i == 0 else "1.5"}' for i, sensor in enumerate(sensors))
        return f'{{"device_id": {device}, "ts": {ts_text}{extra}, "readings": {{{readings}}}}}'

    return [
        ("[" * 60_000 + "]" * 4_000, DeadLetterReason.BAD_JSON),
        (event("1" + "0" * 400), DeadLetterReason.OUT_OF_RANGE),
        (event(repr(ts), reading="1" + "0" * 400), DeadLetterReason.OUT_OF_RANGE),
        (event(repr(ts), reading="1e300"), DeadLetterReason.OUT_OF_RANGE),
        (event(repr(ts), device='"\\ud800"'), DeadLetterReason.WRONG_TYPE),
        (event(repr(ts), extra=', "event_id": "x\\udfff"'), DeadLetterReason.WRONG_TYPE),
        (event("-5"), DeadLetterReason.IMPLAUSIBLE_TIMESTAMP),
        (event('"0001-01-01T00:00:00"'), DeadLetterReason.IMPLAUSIBLE_TIMESTAMP),
    ]
