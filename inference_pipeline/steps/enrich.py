"""Device metadata joined to each device batch before featurisation, through Beam's ``Enrichment`` transform.

The store is chosen by config (``enrichment``, ``connectors.feature_stores``): Feast with its Redis online store
(``connectors.feast``), Cloud Bigtable (``connectors.bigtable``) or the Vertex AI Feature Store
(``connectors.vertex_feature_store``), each read by Beam's own handler. ``DeviceMetadataLookup`` wraps that
handler with what a live stream needs and Beam's ``Enrichment`` does not give (its repeater raises once retries
run out, which would stop the pipeline; its only cache is Redis, the store we would be protecting; its counters,
incremented on its request thread, would be lost):

- one lookup per device batch (a batch is one device's events), cached per device for ``cache_ttl_s`` (unknown
  devices too), so the store sees about one request per device per TTL;
- a failed or timed-out lookup is retried with exponential backoff (``retry``); when retries run out the store is
  left alone for ``cooldown_s`` and batches go on at once with the device's last cached record (flag ``stale``)
  or the fields' defaults (``unavailable``): the stream never stalls on the store;
- a device the store does not know, or fields it lacks, take the configured defaults (``missing``/``partial``),
  counted, never a crash.

Every prediction carries its batch's flag in the ``enrichment`` column (``ok``, ``partial``, ``missing``,
``stale``, ``unavailable``). Counters (namespace ``iotml``): ``enrichment_lookups``, ``enrichment_cache_hits``,
``enrichment_missing_keys``, ``enrichment_store_errors``, ``enrichment_defaulted_batches``.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.enrichment import Enrichment, EnrichmentSourceHandler
from cachetools import LRUCache

from features.metadata import ENTITY, MetadataField, missing_fields
from features.schema import EventBatch

LOG = logging.getLogger(__name__)
NAMESPACE = "iotml"
OK, PARTIAL, MISSING, STALE, UNAVAILABLE = "ok", "partial", "missing", "stale", "unavailable"

class MetadataStore(Protocol):
    """A configured store (``connectors.feature_stores``): Beam's handler for it, and its answers as records."""

    def lookup_handler(self, fields: Sequence[MetadataField], timeout_s: float) -> EnrichmentSourceHandler: ...

    def record(self, response: Mapping[str, Any]) -> dict[str, Any]: ...


class LookupSettings(Protocol):
    """How the stream protects itself from the store (``connectors.feature_stores.EnrichmentSettings``)."""

    store: MetadataStore
    timeout_s: float
    retry: Any  # attempts, initial_s, max_s
    cooldown_s: float
    cache_ttl_s: float
    cache_devices: int


@dataclasses.dataclass(frozen=True)
class _Cached:
    record: dict[str, Any]
    fetched_at: float


@dataclasses.dataclass
class Answer:
    """A lookup's outcome: the record (None: defaults), its flag (None: a roster notice, not looked up) and what
    happened, by counter name (counted by ``JoinMetadata``: Beam runs the lookup on a thread of its own, where
    metrics would be lost)."""

    record: dict[str, Any] | None
    flag: str | None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


class DeviceMetadataLookup(EnrichmentSourceHandler):
    """(device_id, EventBatch) -> ((device_id, EventBatch), Answer): the store's handler behind a per-device TTL
    cache, retries with backoff and a fallback to the last record or the defaults (module docstring)."""

    def __init__(self, settings: LookupSettings, fields: Sequence[MetadataField]):
        self._settings = settings
        self._fields = tuple(fields)

    def __enter__(self) -> None:
        self._cache: LRUCache = LRUCache(self._settings.cache_devices)
        self._handler: EnrichmentSourceHandler | None = None
        self._resume_at = 0.0

    def __exit__(self, *exc_info: Any) -> None:
        if self._handler is not None:
            self._handler.__exit__(*exc_info)
            self._handler = None

    def get_cache_key(self, request: tuple[str, EventBatch]) -> str:
        return f"{ENTITY}: {request[0]}"

    def __call__(self, request: tuple[str, EventBatch], *args: Any, **kwargs: Any) -> tuple:
        device_id, batch = request
        if batch.notice is not None:
            return request, Answer(None, None)
        answer = Answer(None, UNAVAILABLE)
        now = time.monotonic()
        cached = self._cache.get(device_id)
        if cached is not None and now - cached.fetched_at < self._settings.cache_ttl_s:
            answer.count("enrichment_cache_hits")
            answer.record = cached.record
        elif now >= self._resume_at and self._fetch(device_id, answer):
            self._cache[device_id] = _Cached(answer.record, now)
        else:
            if now >= self._resume_at:
                self._resume_at = time.monotonic() + self._settings.cooldown_s
            if cached is not None:
                answer.record, answer.flag = cached.record, STALE
            else:
                answer.count("enrichment_defaulted_batches")
            return request, answer
        missing = len(missing_fields(self._fields, answer.record))
        answer.flag = OK if not missing else MISSING if missing == len(self._fields) else PARTIAL
        if missing:
            answer.count("enrichment_defaulted_batches")
        return request, answer

    def _fetch(self, device_id: str, answer: Answer) -> bool:
        """Put the device's record from the store into ``answer``; False when the store failed ``retry.attempts``
        times."""
        retry, delay = self._settings.retry, self._settings.retry.initial_s
        for attempt in range(retry.attempts):
            try:
                if self._handler is None:
                    handler = self._settings.store.lookup_handler(self._fields, self._settings.timeout_s)
                    handler.__enter__()
                    self._handler = handler
                answer.count("enrichment_lookups")
                _, response = self._handler(beam.Row(**{ENTITY: device_id}))
                answer.record = self._settings.store.record(response._asdict())
                if not any(answer.record.get(field.name) is not None for field in self._fields):
                    answer.count("enrichment_missing_keys")
                return True
            except Exception as exc:  # any store failure: retried, then the batch goes on without the store
                answer.count("enrichment_store_errors")
                if attempt + 1 == retry.attempts:
                    LOG.warning("device metadata store failed %d times (%s: %s); going on without it for %.1f s",
                                retry.attempts, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "",
                                self._settings.cooldown_s)
                    return False
                time.sleep(delay)
                delay = min(delay * 2, retry.max_s)
        return False


class JoinMetadata:
    """The device batch carrying its record and flag; the lookup's counts become Beam counters (here, on the
    step's own thread)."""

    def __init__(self) -> None:
        self._counters: dict[str, Any] = {}

    def __call__(self, request: tuple[str, EventBatch], answer: Answer) -> tuple[str, EventBatch]:
        for name, count in answer.counts.items():
            if name not in self._counters:
                self._counters[name] = Metrics.counter(NAMESPACE, name)
            self._counters[name].inc(count)
        device_id, batch = request
        if answer.flag is None:
            return request
        return device_id, dataclasses.replace(batch, metadata=answer.record, enrichment=answer.flag)


class EnrichDevices(beam.PTransform):
    """(device_id, EventBatch) -> the same with ``metadata`` and ``enrichment`` set, through Beam's ``Enrichment``
    with ``DeviceMetadataLookup`` (which never raises, so Beam's repeater and throttler never engage: the bound on
    a lookup is the lookup's own retries and timeouts)."""

    def __init__(self, settings: LookupSettings, fields: Sequence[MetadataField]):
        super().__init__()
        self._settings = settings
        self._fields = tuple(fields)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        settings = self._settings
        bound = settings.retry.attempts * (settings.timeout_s + settings.retry.max_s) + 30.0
        return batches | "DeviceMetadata" >> Enrichment(
            DeviceMetadataLookup(settings, self._fields), join_fn=JoinMetadata(), use_custom_types=True,
            timeout=bound, throttler=None)
