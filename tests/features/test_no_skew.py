"""The batch training path and the streaming path give identical feature vectors for the same events, missing
readings, gaps in time and device metadata included: training joins the metadata file's records, the stream the
same records served by a real Feast store on Redis through the enrichment step."""
import os
import pickle
import time
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream as EventStream

from features.scaling import ScaleFeatures
from features.schema import EventRules, RawEvent
from features.spec import FeatureSpec
from features.streaming import DeviceFeatures
from inference_pipeline.builder import LOCAL_RUNNER
from inference_pipeline.steps.parse import ParseEvents
from training.feature_pipeline import batch_features, device_batches, run_feature_pipeline
from features.metadata import MetadataField, metadata_records
from inference_pipeline.connectors.feast import FeastSettings, push_metadata
from inference_pipeline.connectors.feature_stores import EnrichmentSettings
from inference_pipeline.steps.enrich import EnrichDevices
from training.simulate import SENSORS, device_table, iter_payloads, simulate_fleet, write_frame

METADATA = (MetadataField(name="machine_type", kind="category", categories=("L", "M", "H"), default="M"),
            MetadataField(name="install_date", kind="days_since", default=1000),
            MetadataField(name="rated_power_kw", default=7.5))
SPEC = FeatureSpec(sensors=SENSORS, window=12, max_gap_s=60.0, fill_values=tuple(range(len(SENSORS))), lags=5,
                   metadata=METADATA)


def _streaming_features(frame, transform_dir, batch_sizes, out_dir, enrichment):
    payloads = list(iter_payloads(frame, SENSORS))
    stream = EventStream()
    start = 0
    for i, size in enumerate(batch_sizes * 1000):
        if start >= len(payloads):
            break
        stream = stream.add_elements([[RawEvent(p, time.time()) for p in payloads[start:start + size]]]).advance_watermark_to(i)
        start += size
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions([], runner="BundleBasedDirectRunner", streaming=True)
    with beam.Pipeline(options=options) as pipeline:
        events = pipeline | stream | ParseEvents(EventRules(SENSORS, max_future_s=1e12))
        (events.events | EnrichDevices(enrichment, METADATA) | DeviceFeatures(SPEC)
         | "SaveRaw" >> beam.Map(_save, str(out_dir / "raw")))
    raw = [element for element in (pickle.loads(f.read_bytes()) for f in (out_dir / "raw").iterdir())
           if len(element[1])]  # the device roster's notices carry no rows
    with beam.Pipeline(options=PipelineOptions([], runner=LOCAL_RUNNER)) as pipeline:
        (pipeline | beam.Create(raw) | ScaleFeatures(SPEC, transform_dir)
         | "SaveScaled" >> beam.Map(_save, str(out_dir / "scaled")))
    return {"raw": raw, "scaled": [pickle.loads(f.read_bytes()) for f in (out_dir / "scaled").iterdir()]}


def _save(element, folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, uuid.uuid4().hex), "wb") as handle:
        pickle.dump(element, handle)


@pytest.mark.services
def test_batch_and_streaming_features_are_identical(tmp_path):
    frame = simulate_fleet(3, 240, seed=11, fault_rate=0)
    rng = np.random.default_rng(3)
    for sensor in SENSORS[:2]:
        frame.loc[rng.random(len(frame)) < 0.05, sensor] = np.nan
    first = frame["device_id"] == frame["device_id"].iloc[0]
    frame.loc[first & (frame["ts"] > frame.loc[first, "ts"].median()), "ts"] += 600.0
    table = write_frame(frame, tmp_path / "events.parquet")
    devices = device_table(sorted(frame["device_id"].unique()))
    devices.loc[0, "rated_power_kw"] = None  # a field the store lacks for one device: its default on both paths
    records = metadata_records(devices, METADATA)
    store = FeastSettings(repo=str(tmp_path / "repo"), project=f"skew{uuid.uuid4().hex[:8]}")
    push_metadata(store, METADATA, devices, 0.5)
    transform_dir = tmp_path / "transform"
    shards = run_feature_pipeline(table, SPEC, transform_dir, tmp_path / "shards", True,
                                  PipelineOptions([], runner=LOCAL_RUNNER), records)
    batch_raw = {device: batch_features((device, events), SPEC)[1]
                 for device, events in device_batches(frame, SPEC, records)}

    streamed = _streaming_features(frame, transform_dir, [150, 1, 400, 169], tmp_path / "streamed",
                                   EnrichmentSettings(store=store))

    raw_by_device, scaled_by_device = {}, {}
    for device_id, batch in streamed["raw"]:
        raw_by_device.setdefault(device_id, []).append(batch)
    for device_id, batch in streamed["scaled"]:
        scaled_by_device.setdefault(device_id, []).append(batch)
    assert set(raw_by_device) == set(batch_raw) == {s.device_id for s in shards}
    for device, expected in batch_raw.items():
        got = sorted(raw_by_device[device], key=lambda b: b.events.ts[0])
        assert np.array_equal(np.concatenate([b.features for b in got]), expected.features)
        assert np.array_equal(np.concatenate([b.imputed for b in got]), expected.imputed)
        assert np.isfinite(expected.features).all() and expected.imputed.any()
        assert np.array_equal(np.concatenate([b.events.event_ids for b in got]), expected.events.event_ids)
        assert {b.events.enrichment for b in got} == {"partial" if device == devices.loc[0, "device_id"] else "ok"}
    for shard in shards:
        got = sorted(scaled_by_device[shard.device_id], key=lambda b: b.events.ts[0])
        scaled = np.concatenate([b.features for b in got])
        assert scaled.shape == shard.features.shape
        assert np.array_equal(scaled, shard.features)
    fleet = np.concatenate([shard.features for shard in shards])
    assert np.allclose(fleet.mean(axis=0), 0.0, atol=1e-3)
    assert min(np.diff(np.flatnonzero(shard.filled == 1)).min(initial=1000) for shard in shards) > 1  # a gap restarted
