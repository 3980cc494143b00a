"""Replay throughput: the Beam pipeline on the local runner vs a plain Python loop doing the same work.

Same generated events, same work both ways: parse + validate, per-device window features, the fitted MLTransform
z-score, the autoencoder, the threshold. Each side is timed end to end including its own start-up (the pipeline's
graph construction and TF artifact load; the loop's model load and transform read). Last output line is JSON:
{"events": N, "pipeline_eps": x, "baseline_eps": y, "ratio": x/y}

    python benchmarks/replay_throughput.py --events 200000 [--bundle PATH] [--batch-size 4000]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from features.scaling import ScaleFeatures
from features.schema import EventBatch, EventRules, FeatureBatch, RawEvent, parse_events
from features.window import window_features, window_fill
from inference_pipeline.config import load_config
from inference_pipeline.builder import LOCAL_RUNNER, ScoreEvents
from inference_pipeline.connectors.replay import ReadReplay, read_payloads
from model_handlers.model_version import ModelBundle
from model_handlers.networks import error_to_score
from model_handlers.torch_model import LoadedModel
from training.simulate import iter_payloads, simulate_fleet

DEVICES = 50


def train_bundle(work: Path) -> ModelBundle:
    """A small model trained and registered the normal way (the benchmark needs a real bundle)."""
    from inference_pipeline.jobs.main_job import simulate_datasets
    from inference_pipeline.builder import pipeline_options
    from training.workflow import train_and_register

    config = load_config(overrides={"work_dir": str(work), "simulation.devices": DEVICES,
                                    "simulation.train_duration_s": 600, "simulation.duration_s": 300,
                                    "training.epochs": 3})
    data = simulate_datasets(config)
    run = train_and_register(data.train, data.eval, config.features, config.training, work, config.tracking_uri,
                             "bench", pipeline_options(config), progress=False)
    return ModelBundle.open(run.bundle_dir)


def write_events(path: Path, n_events: int, sensors: tuple[str, ...]) -> None:
    frame = simulate_fleet(DEVICES, n_events // DEVICES, seed=7, start=time.time() - n_events // DEVICES - 60)
    path.write_text("\n".join(iter_payloads(frame.iloc[:n_events], sensors)) + "\n")


class _Count(beam.DoFn):
    def __init__(self):
        self.predictions = Metrics.counter("bench", "predictions")

    def process(self, element) -> None:
        self.predictions.inc(len(element[1]))


def run_pipeline(events: Path, bundle: ModelBundle, batch_size: int) -> tuple[float, int]:
    config = load_config(overrides={"alerting.open_after": 3})
    rules = EventRules(bundle.feature_spec.sensors)
    started = time.time()
    pipeline = beam.Pipeline(options=PipelineOptions([], runner=LOCAL_RUNNER))
    raws = pipeline | "ReadEvents" >> ReadReplay(events, rules.sensors, batch_size=batch_size)
    outputs = raws | "ScoreEvents" >> ScoreEvents(bundle, rules, config)
    outputs.predictions | "Count" >> beam.ParDo(_Count())
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_name("predictions"))["counters"]
    return time.time() - started, int(sum(c.committed for c in counters))


def scaling_affine(bundle: ModelBundle, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """The fitted z-score as x * slope + offset, read by sending probe rows 0 and 1 through the artifact."""
    n_features = len(bundle.feature_spec.feature_names)
    events = EventBatch("probe", np.array(["0", "1"], dtype=object), np.zeros(2), np.zeros((2, 1)), np.zeros(2))
    probe = FeatureBatch(events, np.stack([np.zeros(n_features), np.ones(n_features)]).astype(np.float32),
                         np.ones(2))
    out = work / "probe.npy"
    with beam.Pipeline(options=PipelineOptions([], runner=LOCAL_RUNNER)) as pipeline:
        (pipeline | beam.Create([("probe", probe)]) | ScaleFeatures(bundle.feature_spec, bundle.transform_dir)
         | beam.Map(lambda element: np.save(out, element[1].features)))
    scaled = np.load(out)
    return scaled[1] - scaled[0], scaled[0]


def run_baseline(events: Path, bundle: ModelBundle, batch_size: int, work: Path) -> tuple[float, int]:
    """The same work as a plain loop: chunks of raw lines -> per-device numpy state -> one forward per chunk."""
    started = time.time()
    spec = bundle.feature_spec
    slope, offset = scaling_affine(bundle, work)
    model = LoadedModel(bundle, __import__("torch").device("cpu"))
    rules = EventRules(spec.sensors)
    payloads = read_payloads(events, "device_id", "ts", spec.sensors, None)
    history: dict[str, np.ndarray] = {}
    predictions = 0
    for start in range(0, len(payloads), batch_size):
        now = time.time()
        batches, _ = parse_events([RawEvent(p, now) for p in payloads[start:start + batch_size]], rules, now)
        features, fills = [], []
        for batch in batches:
            past = history.get(batch.device_id, np.empty((0, len(spec.sensors))))
            features.append(window_features(past, batch.values, spec.window, spec.stats))
            fills.append(window_fill(len(past), len(batch), spec.window))
            history[batch.device_id] = np.concatenate([past, batch.values])[-(spec.window - 1):]
        scaled = np.concatenate(features) * slope + offset
        scores = error_to_score(model.errors(scaled), bundle.threshold)
        flags = (scores >= 0.5) & (np.concatenate(fills) >= spec.window)
        predictions += len(flags)
    return time.time() - started, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--bundle", type=Path, help="a model bundle folder (default: train a small one)")
    parser.add_argument("--batch-size", type=int, default=4000)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = ModelBundle.open(args.bundle) if args.bundle else train_bundle(work / "train")
        events = work / "events.jsonl"
        write_events(events, args.events, bundle.feature_spec.sensors)
        baseline_s, baseline_n = run_baseline(events, bundle, args.batch_size, work)
        pipeline_s, pipeline_n = run_pipeline(events, bundle, args.batch_size)
    if baseline_n != args.events or pipeline_n != args.events:
        raise SystemExit(f"event counts differ: baseline {baseline_n}, pipeline {pipeline_n}, events {args.events}")
    print(f"baseline: {baseline_s:.2f} s, pipeline: {pipeline_s:.2f} s for {args.events} events")
    pipeline_eps, baseline_eps = args.events / pipeline_s, args.events / baseline_s
    print(json.dumps({"events": args.events, "pipeline_eps": round(pipeline_eps, 1),
                      "baseline_eps": round(baseline_eps, 1), "ratio": round(pipeline_eps / baseline_eps, 3)}))


if __name__ == "__main__":
    main()
