"""Pipeline throughput per handler kind: the same replay through the graph ``iotml stream`` runs, once per kind,
each serving a model over the same feature spec and MLTransform artifacts:

- ``torch``: the autoencoder (``replay_throughput.train_version``, trained the normal way);
- ``mlflow``: a scikit-learn logistic regression (normal vs shifted rows) saved with MLflow as ``predict_proba`` and
  packaged over the autoencoder's transform (``tests/mlflow_flavours.sklearn_classifier``, the flavour the tests
  serve);
- ``transformers``: the PatchTST forecaster over 16 lagged readings per sensor (its own feature spec and transform),
  trained the same way;
- ``http_endpoint``: the autoencoder again, scored by ``mlflow models serve`` of its version on this machine (one
  uvicorn worker; the stream's JSON requests and the server's parsing are what it adds);
- ``vertex_endpoint``: the same model server behind the local Vertex AI stand-in (``remote_endpoint.py``): the
  Vertex client's and the stand-in's overhead on top of it, not Vertex AI's.

Steady-state events per second as ``replay_throughput.py`` measures them (first to last prediction batch), one
worker, median of ``--runs``. Last output line is JSON: ``{"events": N, "torch_eps": x, "mlflow_eps": y, ...}``.

    python benchmarks/handler_kinds.py [--events 100000] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference_pipeline.config import load_config  # noqa: E402
from inference_pipeline.runtime.run import event_rules  # noqa: E402
from model_handlers.kinds import HANDLERS  # noqa: E402
from replay_throughput import run_pipeline, train_version, write_events  # noqa: E402
from tests.mlflow_flavours import sklearn_classifier  # noqa: E402
from remote_endpoint import vertex_deployment  # noqa: E402
from tests.model_servers import ModelServer  # noqa: E402
from tests.vertex_stand_in import vertex_stand_in  # noqa: E402


TRANSFORMER = {"training.model": "patchtst", "features.lags": 16, "model.handler": "transformers"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=4000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch_version = train_version(work / "train")
        versions = {"torch": torch_version, "mlflow": sklearn_classifier(work / "mlflow", torch_version)[0],
                    "transformers": train_version(work / "transformer", TRANSFORMER), "http_endpoint": torch_version,
                    "vertex_endpoint": torch_version}
        with ModelServer(str(torch_version.path), None, work / "serve.log") as server, \
                vertex_stand_in(staging_bucket="gs://bench") as stand_in:
            vertex = vertex_deployment(stand_in, torch_version, server, 2048)
            settings = {"http_endpoint": {"url": server.url},
                        "vertex_endpoint": vertex.model_dump(include={"endpoint_id", "vertex", "max_batch_size"})}
            missing = {kind.model_fields["handler"].default for kind in HANDLERS} - set(versions)
            if missing:
                raise SystemExit(f"no benchmark model for handler kinds {sorted(missing)}")
            events = work / "events.jsonl"
            write_events(events, args.events, torch_version.feature_spec.sensors)
            figures: dict[str, list[float]] = {kind: [] for kind in versions}
            for _ in range(args.runs):
                for kind, version in versions.items():
                    served = load_config(overrides={"model": {"handler": kind, "uri": str(version.path),
                                                              **settings.get(kind, {})}})
                    run = run_pipeline(served, events, version, event_rules(served, version), args.batch_size)
                    if run.predictions != args.events:
                        raise SystemExit(f"{kind}: {run.predictions} predictions for {args.events} events")
                    figures[kind].append(run.eps)
                    print(f"{kind}: {run.eps:.0f} ev/s steady, start-up {run.startup_s:.2f} s", flush=True)
    print(json.dumps({"events": args.events, "runs": args.runs,
                      **{f"{kind}_eps": round(statistics.median(eps), 1) for kind, eps in figures.items()}}))


if __name__ == "__main__":
    main()
