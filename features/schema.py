"""Sensor event schema: the wire format, its validation, and the columnar batches the pipeline passes on.

Wire format (one JSON object per message)::

    {"device_id": "pump-003", "ts": 1767225600.0, "event_id": "pump-003-42",
     "readings": {"flow_rate": 101.3, "pressure": 4.1, ...}}

``ts`` is epoch seconds (number) or an ISO-8601 string; ``event_id`` is optional (derived from device, time and
readings when absent). A sensor named in the feature spec may be absent or null (a missing reading: NaN here,
imputed by the window features and flagged in the prediction), but not all of them; a present reading must be
numeric, finite and within ``EventRules.max_abs_reading``; ``ts`` must lie between ``EventRules.min_timestamp`` and the clock plus
``max_future_s``; ``device_id`` and ``event_id`` must be valid Unicode. Anything else is a dead letter with its reason,
never an exception: one bad message costs one dead letter.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import struct
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from features.window import WindowState


class DeadLetterReason:
    """Why an event was rejected; the values are what the dead-letter sink stores."""

    BAD_JSON = "bad_json"
    OVERSIZE = "oversize"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    FUTURE_TIMESTAMP = "future_timestamp"
    IMPLAUSIBLE_TIMESTAMP = "implausible_timestamp"
    UNKNOWN_DEVICE = "unknown_device"
    INFERENCE_ERROR = "inference_error"


@dataclasses.dataclass(frozen=True)
class RawEvent:
    """A payload as it arrived, with the wall-clock second it was received (the latency clock starts here).

    ``size``: the payload's true size in bytes when a source kept only its head (``payload``) because it is over
    the payload limit; such an event can only be an oversize dead letter."""

    payload: bytes | str
    received_at: float
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A rejected event: the raw payload, a machine-readable reason and a human-readable detail."""

    reason: str
    detail: str
    payload: str
    received_at: float
    device_id: str | None = None


@dataclasses.dataclass(frozen=True)
class DeviceNotice:
    """What the stream tells a device's state when the device has sent nothing since ``last_seen`` (wall clock):
    it is ``silent`` (an incident opens) or ``expire`` (its state is dropped)."""

    SILENT = "silent"
    EXPIRE = "expire"

    kind: str
    last_seen: float


@dataclasses.dataclass
class EventBatch:
    """Valid events of one device, in arrival order, as columns; an empty batch with a ``notice`` carries that
    notice to the device's state instead of events."""

    device_id: str
    event_ids: np.ndarray  # (n,) object
    ts: np.ndarray  # (n,) float64 epoch seconds (event time)
    values: np.ndarray  # (n, n_sensors) float64
    received_at: np.ndarray  # (n,) float64 wall-clock seconds
    notice: DeviceNotice | None = None
    metadata: dict[str, Any] | None = None  # the device's metadata record, joined by the enrichment step
    enrichment: str | None = None  # how it was joined (``inference_pipeline.steps.enrich``); None: no enrichment

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def of_notice(cls, device_id: str, notice: DeviceNotice, n_sensors: int) -> "EventBatch":
        empty = np.empty(0)
        return cls(device_id, empty.astype(object), empty, np.empty((0, n_sensors)), empty, notice)

    def take(self, rows: np.ndarray) -> "EventBatch":
        """The rows selected by a boolean mask or an index array, in that order."""
        return EventBatch(self.device_id, self.event_ids[rows], self.ts[rows], self.values[rows],
                          self.received_at[rows], metadata=self.metadata, enrichment=self.enrichment)


@dataclasses.dataclass
class FeatureBatch:
    """An event batch with one feature row per event, and the device's window state after it (persisted with the
    batch's predictions, so a restarted stream resumes from it)."""

    events: EventBatch
    features: np.ndarray  # (n, n_features) float32
    filled: np.ndarray  # (n,) readings in each row's window; below the window size the device is warming up
    scaled_by: str | None = None  # the fingerprint of the MLTransform artifacts that scaled ``features``
    imputed: np.ndarray | None = None  # (n, n_sensors) bool: the reading was missing and imputed
    state: WindowState | None = None
    late: np.ndarray | None = None  # (n,) bool: older than the device's window, scored without entering it
    scaled_for: str | None = None  # the model version whose artifacts scaled ``features``: the one to score them

    def __len__(self) -> int:
        return len(self.events)


def feature_rows(element: "tuple[str, FeatureBatch] | FeatureBatch") -> int:
    """A feature batch's rows (keyed by device or not): its weight when steps gather batches by rows."""
    batch = element[1] if isinstance(element, tuple) else element
    return len(batch.features)


@dataclasses.dataclass(frozen=True)
class EventRules:
    """What a valid event is: its sensors, the devices we know (None: any) and limits."""

    sensors: tuple[str, ...]
    known_devices: frozenset[str] | None = None
    max_future_s: float = 300.0
    max_payload_bytes: int = 65536
    min_timestamp: float = 946684800.0
    max_abs_reading: float = 1e9


class EventError(ValueError):
    """An event that breaks the schema; ``reason`` is a DeadLetterReason value."""

    def __init__(self, reason: str, detail: str, device_id: str | None = None):
        super().__init__(detail)
        self.reason = reason
        self.device_id = device_id


def _as_float(value: int | float, what: str) -> float:
    """A JSON number as a float; an integer too large for one is out of range, not a crash."""
    try:
        number = float(value)
    except OverflowError:
        raise EventError(DeadLetterReason.OUT_OF_RANGE, f"{what} is too large for a number: {str(value)[:20]}...") \
            from None
    if not math.isfinite(number):
        raise EventError(DeadLetterReason.NON_FINITE, f"{what} is not finite")
    return number


def parse_timestamp(value: object) -> float:
    """Epoch seconds from a number or an ISO-8601 string (naive strings are UTC)."""
    if isinstance(value, bool):
        raise EventError(DeadLetterReason.WRONG_TYPE, f"field 'ts' must be a number or ISO-8601 string, got {value!r}")
    if isinstance(value, (int, float)):
        return _as_float(value, "field 'ts'")
    if not isinstance(value, str):
        raise EventError(DeadLetterReason.WRONG_TYPE,
                         f"field 'ts' must be a number or ISO-8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    except (ValueError, OverflowError) as exc:
        raise EventError(DeadLetterReason.WRONG_TYPE, f"field 'ts' is not ISO-8601: {value[:64]!r}") from exc


def _text_field(obj: dict, field: str, device_id: str | None = None) -> str:
    """A string field that must be non-empty valid Unicode (JSON can carry lone surrogates, which no sink can
    encode)."""
    value = obj[field]
    if not isinstance(value, str) or not value:
        raise EventError(DeadLetterReason.WRONG_TYPE, f"field '{field}' must be a non-empty string", device_id)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError(DeadLetterReason.WRONG_TYPE, f"field '{field}' is not valid Unicode", device_id) from None
    return value


def default_event_id(device_id: str, ts: float, values: list[float]) -> str:
    """The id of an event sent without one: device, time and a digest of its readings, so a resent copy keeps its
    id while two different events at the same time stay apart."""
    digest = hashlib.blake2b(struct.pack(f"<{len(values)}d", *values), digest_size=4).hexdigest()
    return f"{device_id}@{ts:.6f}#{digest}"


def validate_event(obj: object, rules: EventRules, now: float) -> tuple[str, str, float, list[float]]:
    """Check one decoded event; returns (device_id, event_id, ts, readings in sensor order) or raises EventError."""
    if not isinstance(obj, dict):
        raise EventError(DeadLetterReason.WRONG_TYPE, f"event must be a JSON object, got {type(obj).__name__}")
    for field in ("device_id", "ts", "readings"):
        if field not in obj:
            raise EventError(DeadLetterReason.MISSING_FIELD, f"missing field '{field}'")
    device_id = _text_field(obj, "device_id")
    ts = parse_timestamp(obj["ts"])
    if ts > now + rules.max_future_s:
        raise EventError(
            DeadLetterReason.FUTURE_TIMESTAMP,
            f"event time {ts:.3f} is {ts - now:.0f} s ahead of the clock (limit {rules.max_future_s:.0f} s)",
            device_id,
        )
    if ts < rules.min_timestamp:
        raise EventError(DeadLetterReason.IMPLAUSIBLE_TIMESTAMP,
                         f"event time {ts:.3f} is before {rules.min_timestamp:.0f} (no plausible device clock)",
                         device_id)
    if rules.known_devices is not None and device_id not in rules.known_devices:
        raise EventError(DeadLetterReason.UNKNOWN_DEVICE, f"unknown device '{device_id}'", device_id)
    readings = obj["readings"]
    if not isinstance(readings, dict):
        raise EventError(DeadLetterReason.WRONG_TYPE, "field 'readings' must be an object", device_id)
    values = []
    for sensor in rules.sensors:
        value = readings.get(sensor)
        if value is None:
            values.append(math.nan)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EventError(DeadLetterReason.WRONG_TYPE,
                             f"reading '{sensor}' must be a number, got {repr(value)[:64]}", device_id)
        number = _as_float(value, f"reading '{sensor}'")
        if abs(number) > rules.max_abs_reading:
            raise EventError(DeadLetterReason.OUT_OF_RANGE,
                             f"reading '{sensor}' = {number:.6g} is beyond +/-{rules.max_abs_reading:.6g}", device_id)
        values.append(number)
    if all(math.isnan(value) for value in values):
        raise EventError(DeadLetterReason.MISSING_FIELD, "no reading of any sensor", device_id)
    event_id = default_event_id(device_id, ts, values) if obj.get("event_id") is None else \
        _text_field(obj, "event_id", device_id)
    return device_id, event_id, ts, values


_DEVICE_KEY = re.compile(r'"device_id"\s*:\s*"([^"]*)"')


def payload_device(payload: bytes | str, max_bytes: int) -> str | None:
    """The device id ``parse_events`` would read from a payload, or None where it would read none (the payload is
    then no valid event, whatever its device). Read without decoding the JSON when that is exact: the text holds no
    backslash (so every quote in it is JSON's own) and names ``"device_id"`` once; otherwise the payload is decoded
    (one over ``max_bytes`` never is: it can only be a dead letter)."""
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    if "\\" not in text and text.count('"device_id"') == 1:
        found = _DEVICE_KEY.search(text)
        return found.group(1) if found else None
    if len(text) > max_bytes:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    device_id = obj.get("device_id") if isinstance(obj, dict) else None
    return device_id if isinstance(device_id, str) else None


def payload_text(payload: bytes | str) -> str:
    """A payload as text any sink can store: invalid UTF-8 replaced, lone surrogates escaped."""
    if isinstance(payload, bytes):
        return payload.decode("utf-8", errors="replace")
    return payload.encode("utf-8", errors="backslashreplace").decode("utf-8")


def parse_events(raws: Iterable[RawEvent], rules: EventRules, now: float) -> tuple[list[EventBatch], list[DeadLetter]]:
    """Decode and validate a batch of raw payloads into per-device event batches (arrival order kept) and dead letters."""
    columns: dict[str, tuple[list, list, list, list]] = {}
    dead: list[DeadLetter] = []
    for raw in raws:
        payload = raw.payload
        try:
            size = len(payload) if raw.size is None else raw.size
            if size > rules.max_payload_bytes:
                raise EventError(DeadLetterReason.OVERSIZE, f"payload of {size} bytes exceeds {rules.max_payload_bytes}")
            try:
                obj = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                raise EventError(DeadLetterReason.BAD_JSON, f"invalid JSON: {exc}") from exc
            except RecursionError:
                raise EventError(DeadLetterReason.BAD_JSON, "invalid JSON: nested too deeply") from None
            device_id, event_id, ts, values = validate_event(obj, rules, now)
        except EventError as err:
            text = payload_text(payload[: rules.max_payload_bytes])
            dead.append(DeadLetter(err.reason, str(err), text, raw.received_at, err.device_id))
            continue
        cols = columns.setdefault(device_id, ([], [], [], []))
        cols[0].append(event_id)
        cols[1].append(ts)
        cols[2].append(values)
        cols[3].append(raw.received_at)
    batches = [
        EventBatch(
            device_id=device,
            event_ids=np.asarray(ids, dtype=object),
            ts=np.asarray(ts, dtype=np.float64),
            values=np.asarray(values, dtype=np.float64).reshape(len(ts), len(rules.sensors)),
            received_at=np.asarray(received, dtype=np.float64),
        )
        for device, (ids, ts, values, received) in columns.items()
    ]
    return batches, dead


def event_payload(device_id: str, ts: float, readings: dict[str, float], event_id: str | None = None) -> str:
    """The JSON wire form of one event (what simulators, replays and publishers send)."""
    values = np.asarray([list(readings.values())], dtype=np.float64)
    return encode_events([device_id], [ts], values, tuple(readings), None if event_id is None else [event_id])[0]


def _number(value: float) -> str:
    """A JSON number; NaN (a missing reading) is null."""
    return repr(value) if math.isfinite(value) else "null" if math.isnan(value) else json.dumps(value)


def encode_events(device_ids: Sequence[str], ts: Sequence[float], values: np.ndarray, sensors: Sequence[str],
                  event_ids: Sequence[str] | None = None) -> list[str]:
    """JSON wire payloads for many events at once (columns in, one string per event out)."""
    quoted: dict[str, str] = {}
    keys = [json.dumps(sensor) + ":" for sensor in sensors]
    payloads = []
    for i, (device_id, when, row) in enumerate(zip(device_ids, np.asarray(ts, dtype=np.float64).tolist(),
                                                   np.asarray(values, dtype=np.float64).tolist())):
        device = quoted.get(device_id) or quoted.setdefault(device_id, json.dumps(device_id))
        readings = ",".join(key + _number(v) for key, v in zip(keys, row))
        event = f',"event_id":{json.dumps(event_ids[i])}' if event_ids is not None else ""
        payloads.append(f'{{"device_id":{device},"ts":{_number(when)}{event},"readings":{{{readings}}}}}')
    return payloads


def event_dead_letters(events: EventBatch, reason: str, detail: str, sensors: Sequence[str]) -> list[DeadLetter]:
    """Validated events refused after parsing, each with its payload in the wire format."""
    payloads = encode_events([events.device_id] * len(events), events.ts, events.values, sensors,
                             events.event_ids.tolist())
    return [DeadLetter(reason, detail, payload, received, events.device_id)
            for payload, received in zip(payloads, events.received_at.tolist())]


def concat_batches(batches: Sequence[EventBatch]) -> EventBatch:
    """One batch from several batches of the same device, in order."""
    if len(batches) == 1:
        return batches[0]
    return EventBatch(
        device_id=batches[0].device_id,
        event_ids=np.concatenate([b.event_ids for b in batches]),
        ts=np.concatenate([b.ts for b in batches]),
        values=np.concatenate([b.values for b in batches]),
        received_at=np.concatenate([b.received_at for b in batches]),
        metadata=batches[0].metadata, enrichment=batches[0].enrichment,
    )
