"""Malformed payloads, mixed into simulated streams to exercise the dead-letter path end to end."""
from __future__ import annotations

import json

import numpy as np

from features.schema import DeadLetterReason

KINDS = (
    DeadLetterReason.BAD_JSON, DeadLetterReason.MISSING_FIELD, DeadLetterReason.WRONG_TYPE,
    DeadLetterReason.NON_FINITE, DeadLetterReason.FUTURE_TIMESTAMP, DeadLetterReason.UNKNOWN_DEVICE,
    DeadLetterReason.OVERSIZE,
)


def corrupt(payload: str, kind: str, max_payload_bytes: int = 65536) -> str:
    """A broken copy of a valid payload that the parser must reject with reason ``kind``."""
    event = json.loads(payload)
    event["event_id"] = f"bad-{kind}-{event.get('event_id', '')}"
    sensor = next(iter(event["readings"]))
    if kind == DeadLetterReason.BAD_JSON:
        return json.dumps(event)[:-7]
    if kind == DeadLetterReason.MISSING_FIELD:
        del event["ts"]
    elif kind == DeadLetterReason.WRONG_TYPE:
        event["readings"][sensor] = "high"
    elif kind == DeadLetterReason.NON_FINITE:
        event["readings"][sensor] = float("nan")
    elif kind == DeadLetterReason.FUTURE_TIMESTAMP:
        event["ts"] = 4102444800.0
    elif kind == DeadLetterReason.UNKNOWN_DEVICE:
        event["device_id"] = "ghost-999"
    elif kind == DeadLetterReason.OVERSIZE:
        event["padding"] = "x" * max_payload_bytes
    else:
        raise ValueError(f"unknown corruption {kind!r}")
    return json.dumps(event)


def mix_in_malformed(payloads: list[str], fraction: float, seed: int) -> tuple[list[str], dict[str, int]]:
    """Insert ``fraction`` * len(payloads) malformed events (cycling through KINDS) at random positions.

    Returns the mixed stream and how many of each reason were inserted.
    """
    rng = np.random.default_rng(seed)
    count = int(round(len(payloads) * fraction))
    sources = rng.integers(0, len(payloads), size=count)
    positions = set(rng.choice(len(payloads) + count, size=count, replace=False).tolist())
    bad = iter([corrupt(payloads[src], KINDS[i % len(KINDS)]) for i, src in enumerate(sources.tolist())])
    good = iter(payloads)
    mixed = [next(bad) if i in positions else next(good) for i in range(len(payloads) + count)]
    expected: dict[str, int] = {}
    for i in range(count):
        expected[KINDS[i % len(KINDS)]] = expected.get(KINDS[i % len(KINDS)], 0) + 1
    return mixed, expected
