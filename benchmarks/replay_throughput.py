"""Replay throughput: the Beam pipeline on the local runner vs a plain Python loop doing the same work.

Same generated events, same work both ways: parse + validate, per-device window features, the fitted MLTransform
z-score, the autoencoder, the threshold. The pipeline is the one ``iotml stream`` runs, built by
``inference_pipeline.builder.create_pipeline`` (a replay source of the events file, no sinks) and run by
``runtime.run.run_graph``; the loop is the fixed reference (the z-score as the affine map read from the fitted
artifact, one forward pass per chunk of raw lines).

Start-up and steady state are reported apart:

- pipeline start-up: from the start (before the graph is built) until its first prediction batch is produced (graph
  construction, TF artifact and model load, file read, and whatever runs ahead of the first prediction); steady
  state: events predicted after the first batch / (last - first prediction batch), from each batch's
  ``processing_time``, recorded by a small step on the predictions (Beam metrics);
- baseline start-up: its set-up (reading the fitted scaling, loading the model); steady state: events / the loop
  (reading the file's lines, then chunk by chunk to the threshold).

The pipeline also runs with two SDK worker processes (``direct_num_workers=2``, ``direct_running_mode=
multi_processing``). Beam 2.77's local runner runs a stage that holds user state on one worker only (its
``_get_bundle_manager``: "a single key cannot be processed concurrently"), and our fused stage holds the per-device
state, so the second worker has nothing to do: the figure shows what the local runner gives, not what a runner that
partitions state by key (Dataflow) gives.

With ``--enriched``, a third pipeline runs a version whose features include device metadata, joined by the
enrichment step from a real Feast store (Redis at ``--redis``, the simulated fleet's device table pushed first, a
5-minute per-device cache), and with ``--warehouse DSN`` writes every prediction, alert, dead letter and per-minute
summary to PostgreSQL too (a fresh schema); it reports ``"pipeline_eps_enriched"``.

Each side runs ``--runs`` times (interleaved); the numbers are medians, each ratio the median of the per-run ratios
of steady-state events per second (pipeline / baseline). Counts are checked to equal ``--events`` on every side. Last
output line is JSON:
{"events": N, "pipeline_eps": x, "baseline_eps": y, "ratio": r, "pipeline_eps_2_workers": x2, "ratio_2_workers": r2,
 "pipeline_startup_s": s, "baseline_startup_s": s, "runs": 3}

    python benchmarks/replay_throughput.py --events 200000 [--bundle PATH] [--batch-size 4000] [--runs 3]
        [--enriched [--redis 127.0.0.1:6379] [--warehouse "host=127.0.0.1 dbname=test user=postgres"]]

Profile (the local runner executes bundles in this process, so the pipeline's steps show up under it). py-spy's
sampling over-weights native calls (it gave the autoencoder's forward pass 1.3 s where timing it gave 0.3 s), so
read its Python-level split and confirm a step's share by timing it:

    pip install py-spy && py-spy record -r 200 -f raw -o replay.txt -- \
        python benchmarks/replay_throughput.py --events 200000 --runs 1
    python -m cProfile -o replay.prof benchmarks/replay_throughput.py --events 200000 --runs 1
    python -c "import pstats; pstats.Stats('replay.prof').sort_stats('cumulative').print_stats(40)"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import numpy as np
import torch
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from features.scaling import ScaleFeatures
from features.schema import EventBatch, EventRules, FeatureBatch, RawEvent, parse_events
from features.window import WindowState
from inference_pipeline.builder import LOCAL_RUNNER, create_pipeline, pipeline_options
from inference_pipeline.config import Config, load_config
from inference_pipeline.connectors.replay import ReplaySettings, read_payloads
from inference_pipeline.runtime.run import event_rules, outcome_counts, run_graph
from model_handlers.model_version import ModelVersion
from model_handlers.torch_model import LoadedModel
from training.simulate import iter_payloads, simulate_fleet

DEVICES = 50
BENCH = "bench"


def train_version(work: Path, overrides: dict | None = None) -> ModelVersion:
    """A small model trained and registered the normal way (the benchmark needs a real model version); config
    ``overrides`` choose another model (``training.model``)."""
    from inference_pipeline.jobs.main_job import simulate_datasets
    from training.workflow import train_and_register

    config = load_config(overrides={"work_dir": str(work), "simulation.devices": DEVICES,
                                    "simulation.train_duration_s": 600, "simulation.duration_s": 300,
                                    "training.epochs": 3, **(overrides or {})})
    data = simulate_datasets(config)
    run = train_and_register(data.train, data.eval, config.features, config.training, work, config.tracking_uri,
                             "bench", pipeline_options(config), progress=False)
    return ModelVersion.open(run.bundle_dir)


ENRICHED = {"features.metadata": [
    {"name": "machine_type", "kind": "category", "categories": ["L", "M", "H"], "default": "M"},
    {"name": "last_service", "kind": "days_since", "default": 180}, {"name": "rated_power_kw", "default": 7.5}]}


def enriched_config(config: Config, work: Path, redis: str, warehouse: str | None) -> Config:
    """The config with the Feast store on ``redis`` loaded with the fleet's device table, and the warehouse sink."""
    from inference_pipeline.jobs.features import push_device_metadata
    from training.simulate import device_table

    store = {"store": "feast", "repo": str(work / "feature_repo"), "project": "bench", "online_store": redis}
    sinks = {"warehouse": {"kind": "postgres", "dsn": warehouse, "schema": f"bench_{os.getpid()}",
                           "results": ["predictions", "alerts", "dead_letters", "device_minutes"]}} if warehouse else {}
    enriched = load_config(overrides={**ENRICHED, "enrichment": {"store": store}, "sinks": sinks,
                                      "alerting.open_after": config.alerting.open_after})
    table = work / "devices.csv"
    device_table(sorted(simulate_fleet(DEVICES, 1.0)["device_id"].unique())).to_csv(table, index=False)
    push_device_metadata(enriched, table)
    return enriched


def write_events(path: Path, n_events: int, sensors: tuple[str, ...]) -> None:
    frame = simulate_fleet(DEVICES, n_events // DEVICES, seed=7, start=time.time() - n_events // DEVICES - 60)
    path.write_text("\n".join(iter_payloads(frame.iloc[:n_events], sensors)) + "\n")


@dataclasses.dataclass(frozen=True)
class Run:
    """One side's run: start-up seconds, steady-state events per second, events predicted, total seconds."""

    startup_s: float
    eps: float
    predictions: int
    total_s: float


class _StampBatches(beam.DoFn):
    """Per prediction batch: its ``processing_time`` in integer ms into a distribution (min: the first batch, max:
    the last, count: batches); passes (processing_time, events) on so the first batch's size can be found."""

    def __init__(self):
        self._stamps = Metrics.distribution(BENCH, "processing_ms")

    def process(self, element):
        batch = element.predictions
        self._stamps.update(int(batch.processing_time * 1000))
        yield batch.processing_time, len(batch)


class _FirstBatchSize(beam.DoFn):
    def __init__(self):
        self._events = Metrics.distribution(BENCH, "first_batch_events")

    def process(self, smallest: list[tuple[float, int]]) -> None:
        for _, events in smallest:
            self._events.update(events)


def run_pipeline(config: Config, events: Path, version: ModelVersion, rules: EventRules, batch_size: int,
                 workers: int = 1) -> Run:
    """The pipeline on the local runner; ``workers`` > 1 runs Beam's SDK workers as that many processes
    (``direct_num_workers``, ``direct_running_mode=multi_processing``)."""
    started = time.time()
    replay = config.model_copy(update={"source": ReplaySettings(path=str(events), batch_size=batch_size)})
    options = None
    if workers > 1:
        options = PipelineOptions.from_dictionary({**pipeline_options(replay).get_all_options(drop_default=True),
                                                   "direct_num_workers": workers,
                                                   "direct_running_mode": "multi_processing"})
    graph = create_pipeline(replay, version, rules, options)
    stamps = graph.outputs.results | "BenchStamps" >> beam.ParDo(_StampBatches())
    _ = (stamps | "BenchFirstBatch" >> beam.combiners.Top.Smallest(1)
         | "BenchFirstBatchSize" >> beam.ParDo(_FirstBatchSize()))
    _, result = run_graph(graph)
    seconds = time.time() - started
    predictions = outcome_counts(result)["predictions"]
    found = {d.key.metric.name: d.committed
             for d in result.metrics().query(MetricsFilter().with_namespace(BENCH))["distributions"]}
    if "first_batch_events" not in found:  # nothing predicted: the count check reports it
        return Run(float("nan"), 0.0, predictions, seconds)
    stamps_ms, first_events = found["processing_ms"], found["first_batch_events"].max
    steady_s = (stamps_ms.max - stamps_ms.min) / 1000
    return Run(stamps_ms.min / 1000 - started, (predictions - first_events) / max(steady_s, 1e-3), predictions,
               seconds)


def scaling_affine(version: ModelVersion, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """The fitted z-score as x * slope + offset, read by sending probe rows 0 and 1 through the artifact."""
    n_features = len(version.feature_spec.feature_names)
    events = EventBatch("probe", np.array(["0", "1"], dtype=object), np.zeros(2), np.zeros((2, 1)), np.zeros(2))
    probe = FeatureBatch(events, np.stack([np.zeros(n_features), np.ones(n_features)]).astype(np.float32),
                         np.ones(2))
    out = work / "probe.npy"
    with beam.Pipeline(options=PipelineOptions([], runner=LOCAL_RUNNER)) as pipeline:
        (pipeline | beam.Create([("probe", probe)]) | ScaleFeatures(version.feature_spec, version.transform_dir)
         | beam.Map(lambda element: np.save(out, element[1].features)))
    scaled = np.load(out)
    return scaled[1] - scaled[0], scaled[0]


def run_baseline(events: Path, version: ModelVersion, rules: EventRules, batch_size: int, threshold: float,
                 work: Path) -> Run:
    """The same work as a plain loop: chunks of raw lines -> per-device numpy state -> one forward per chunk."""
    started = time.time()
    spec = version.feature_spec
    slope, offset = scaling_affine(version, work)
    model = LoadedModel(version, torch.device("cpu"))
    setup_s = time.time() - started

    started = time.time()
    payloads = read_payloads(events, "device_id", "ts", spec.sensors, None)
    history: dict[str, WindowState] = {}
    predictions = 0
    for start in range(0, len(payloads), batch_size):
        now = time.time()
        batches, _ = parse_events([RawEvent(p, now) for p in payloads[start:start + batch_size]], rules, now)
        features, fills = [], []
        for batch in batches:
            out = spec.featurise(history.get(batch.device_id) or spec.empty_state(), batch.ts, batch.values)
            features.append(out.features)
            fills.append(out.filled)
            history[batch.device_id] = out.state
        scaled = np.concatenate(features) * slope + offset
        device_ids = np.repeat(np.array([b.device_id for b in batches], dtype=object), [len(b) for b in batches])
        scores = model.score(scaled, device_ids, np.concatenate([b.ts for b in batches])).anomaly_score
        flags = (scores >= threshold) & (np.concatenate(fills) >= spec.window)
        predictions += len(flags)
    seconds = time.time() - started
    return Run(setup_s, predictions / seconds, predictions, setup_s + seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--bundle", type=Path, help="a model version folder (default: train a small one)")
    parser.add_argument("--batch-size", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each side (medians are reported)")
    parser.add_argument("--enriched", action="store_true", help="also run with device metadata from Feast")
    parser.add_argument("--redis", default="127.0.0.1:6379", help="the Feast online store (Redis host:port)")
    parser.add_argument("--warehouse", help="a PostgreSQL DSN: the enriched run also writes its results there")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config = load_config(overrides={"alerting.open_after": 3, "sinks": {}})
    runs: list[tuple[Run, Run, Run]] = []
    # the two-worker run's SDK workers are processes that unpickle this module's steps
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(Path(__file__).parent), os.environ.get("PYTHONPATH"))))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        version = ModelVersion.open(args.bundle) if args.bundle else train_version(work / "train")
        rules = event_rules(config, version)
        events = work / "events.jsonl"
        write_events(events, args.events, version.feature_spec.sensors)
        enriched = None
        if args.enriched:
            enriched_version = train_version(work / "train-enriched", {
                **ENRICHED, "training.device_metadata": str(work / "train-enriched" / "data" / "devices.csv")})
            enriched = (enriched_config(config, work, args.redis, args.warehouse), enriched_version)
        enriched_runs = []
        for run in range(args.runs):
            baseline = run_baseline(events, version, rules, args.batch_size, config.alerting.threshold, work)
            pipeline = run_pipeline(config, events, version, rules, args.batch_size)
            two = run_pipeline(config, events, version, rules, args.batch_size, workers=2)
            counts = {"baseline": baseline.predictions, "pipeline": pipeline.predictions, "2 workers": two.predictions}
            if set(counts.values()) != {args.events}:
                raise SystemExit(f"run {run + 1}: event counts differ from {args.events}: {counts}")
            print(f"run {run + 1}: baseline start-up {baseline.startup_s:.2f} s, {baseline.eps:.0f} ev/s "
                  f"({baseline.total_s:.2f} s in all); pipeline start-up {pipeline.startup_s:.2f} s, "
                  f"{pipeline.eps:.0f} ev/s steady ({pipeline.total_s:.2f} s in all); two workers start-up "
                  f"{two.startup_s:.2f} s, {two.eps:.0f} ev/s steady ({two.total_s:.2f} s in all)", flush=True)
            runs.append((baseline, pipeline, two))
            if enriched is not None:
                with_metadata = run_pipeline(enriched[0], events, enriched[1], rules, args.batch_size)
                if with_metadata.predictions != args.events:
                    raise SystemExit(f"run {run + 1}: the enriched pipeline predicted {with_metadata.predictions}")
                print(f"run {run + 1}: enriched pipeline start-up {with_metadata.startup_s:.2f} s, "
                      f"{with_metadata.eps:.0f} ev/s steady", flush=True)
                enriched_runs.append(with_metadata)
    baselines, pipelines, twos = zip(*runs)
    print(json.dumps({
        "events": args.events,
        "pipeline_eps": _median(r.eps for r in pipelines),
        "baseline_eps": _median(r.eps for r in baselines),
        "ratio": _median((p.eps / b.eps for p, b in zip(pipelines, baselines)), 3),
        "pipeline_eps_2_workers": _median(r.eps for r in twos),
        "ratio_2_workers": _median((t.eps / b.eps for t, b in zip(twos, baselines)), 3),
        "pipeline_startup_s": _median((r.startup_s for r in pipelines), 2),
        "baseline_startup_s": _median((r.startup_s for r in baselines), 2),
        "runs": args.runs,
        **({"pipeline_eps_enriched": _median(r.eps for r in enriched_runs),
            "warehouse": bool(args.warehouse)} if enriched_runs else {}),
    }))


def _median(values, digits: int = 1) -> float:
    return round(statistics.median(values), digits)


if __name__ == "__main__":
    main()
