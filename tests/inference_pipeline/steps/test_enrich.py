"""The enrichment lookup against real Feast stores on Redis: records, missing keys, the TTL cache, and a store that
goes away, hangs or comes back (a private Redis)."""
import time
import uuid

import numpy as np
import pandas as pd
import pytest

from features.metadata import MetadataField
from features.schema import DeviceNotice, EventBatch
from inference_pipeline.connectors.feast import FeastSettings, push_metadata
from inference_pipeline.connectors.feature_stores import EnrichmentSettings, RetrySettings
from inference_pipeline.steps.enrich import DeviceMetadataLookup, JoinMetadata
from tests.redis_server import private_redis  # noqa: F401  (fixture)

pytestmark = pytest.mark.services
FIELDS = (MetadataField(name="rated_power_kw", default=5.5),
          MetadataField(name="machine_type", kind="category", categories=("L", "M", "H"), default="M"))
TABLE = pd.DataFrame({"device_id": ["d1", "d2"], "rated_power_kw": [7.5, None], "machine_type": ["H", "L"]})


def _batch(device: str) -> EventBatch:
    return EventBatch(device, np.array([f"{device}-1"], dtype=object), np.array([1.78e9]), np.zeros((1, 2)),
                      np.zeros(1))


def _lookup(tmp_path, address="127.0.0.1:6379", **settings) -> DeviceMetadataLookup:
    store = FeastSettings(repo=str(tmp_path / "repo"), project=f"t{uuid.uuid4().hex[:10]}", online_store=address)
    enrichment = EnrichmentSettings(store=store, **settings)
    push_metadata(store, FIELDS, TABLE, enrichment.timeout_s)
    lookup = DeviceMetadataLookup(enrichment, FIELDS)
    lookup.__enter__()
    return lookup


def _joined(lookup, device):
    request, response = lookup((device, _batch(device)))
    return JoinMetadata()(request, response)[1]


def test_records_flags_and_cache(tmp_path):
    lookup = _lookup(tmp_path, cache_ttl_s=60)
    first = _joined(lookup, "d1")
    assert first.metadata == {"rated_power_kw": 7.5, "machine_type": "H"} and first.enrichment == "ok"
    assert _joined(lookup, "d2").enrichment == "partial"  # its rated power is missing: that field's default
    unknown = _joined(lookup, "nowhere")
    assert unknown.enrichment == "missing" and not any(unknown.metadata.values())
    answers = [lookup((device, _batch(device)))[1] for device in ("d1", "d2", "nowhere") * 5]
    assert all(answer.counts == {"enrichment_cache_hits": 1} or answer.counts == {
        "enrichment_cache_hits": 1, "enrichment_defaulted_batches": 1} for answer in answers)
    notice = EventBatch.of_notice("d1", DeviceNotice(DeviceNotice.EXPIRE, 0.0), 2)
    assert JoinMetadata()(*lookup(("d1", notice))) == ("d1", notice)  # a roster notice is not looked up


def test_cache_serves_within_ttl(tmp_path):
    lookup = _lookup(tmp_path, cache_ttl_s=60)
    _joined(lookup, "d1")
    handler, lookup._handler = lookup._handler, None
    lookup._settings = lookup._settings.model_copy(update={"store": FeastSettings(repo=str(tmp_path / "none"))})
    assert _joined(lookup, "d1").enrichment == "ok"  # from the cache: the store (now unusable) is not asked
    handler.__exit__(None, None, None)


def test_store_down_then_back(tmp_path, private_redis):
    lookup = _lookup(tmp_path, private_redis.address, cache_ttl_s=0, cooldown_s=0.5, timeout_s=0.2,
                     retry=RetrySettings(attempts=3, initial_s=0.02, max_s=0.05))
    assert _joined(lookup, "d1").enrichment == "ok"
    private_redis.kill()
    started = time.monotonic()
    stale = _joined(lookup, "d1")
    assert stale.enrichment == "stale" and stale.metadata["machine_type"] == "H"  # the last record it had
    assert _joined(lookup, "d2").enrichment == "unavailable"  # never fetched: defaults
    assert time.monotonic() - started < 2.0  # retries, then the cool-down: batches go on at once
    private_redis.start()
    time.sleep(0.6)
    assert _joined(lookup, "d2").enrichment == "partial"  # back, with the data it kept on disk


def test_hung_store_is_bounded_by_its_timeout(tmp_path, private_redis):
    lookup = _lookup(tmp_path, private_redis.address, cache_ttl_s=0, cooldown_s=60, timeout_s=0.2,
                     retry=RetrySettings(attempts=2, initial_s=0.02, max_s=0.05))
    assert _joined(lookup, "d1").enrichment == "ok"
    private_redis.pause()
    started = time.monotonic()
    assert _joined(lookup, "d1").enrichment == "stale"
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    assert [_joined(lookup, "d1").enrichment for _ in range(50)] == ["stale"] * 50  # cooling down: no waits
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("store, handler_class", [
    ({"store": "bigtable", "project": "p", "instance": "i", "table": "devices"}, "BigTableEnrichmentHandler"),
    ({"store": "vertex_feature_store", "project": "p", "location": "europe-west1", "feature_store": "fs",
      "feature_view": "devices"}, "VertexAIFeatureStoreEnrichmentHandler"),
])
def test_gcp_stores_are_beams_handlers_and_without_credentials_give_defaults(store, handler_class, monkeypatch,
                                                                             tmp_path):
    """Chosen by config, each store is Beam's own handler, built on first use (on the worker): here, with no Google
    Cloud credentials or network, the lookup fails, is retried, and the batch goes on with the defaults."""
    from inference_pipeline.config import validate_config

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("google.auth.compute_engine._metadata._NO_GCE_CHECK", True)  # not on Google Cloud
    config = validate_config({"enrichment": {"store": store, "retry": {"attempts": 2, "initial_s": 0.01}}})
    if store["store"] == "bigtable":
        assert type(config.enrichment.store.lookup_handler(FIELDS, 0.5)).__name__ == handler_class
    lookup = DeviceMetadataLookup(config.enrichment, FIELDS)
    lookup.__enter__()
    started = time.monotonic()
    request, answer = lookup(("d1", _batch("d1")))
    assert answer.flag == "unavailable" and answer.record is None
    assert answer.counts == {"enrichment_store_errors": 2, "enrichment_defaulted_batches": 1}
    assert time.monotonic() - started < 20
    assert JoinMetadata()(request, answer)[1].enrichment == "unavailable"


def test_a_store_section_with_a_bad_field_fails_at_load_naming_it():
    from inference_pipeline.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=r"enrichment\.store\.online_store"):
        validate_config({"enrichment": {"store": {"store": "feast", "online_store": "redis,password=x"}}})
    with pytest.raises(ConfigError, match=r"enrichment\.store\.store"):
        validate_config({"enrichment": {"store": {"store": "dynamo"}}})
