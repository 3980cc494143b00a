"""Score the SKAB runs with `iotml score` and grade them with the published outlier protocol.

Protocol (../shared/data/skab/SOURCE.md): each labelled run alone, first 400 rows train, the rest test; F1, FAR and
MAR over all test rows pooled. Labels are read only here, after scoring. Last line: JSON.

    python benchmarks/skab_backfill.py [--data ../shared/data/skab]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from inference_pipeline.jobs.backfill import score_path

TRAIN_ROWS = 400


def grade(scored: list[Path], out_root: Path, data_root: Path) -> dict:
    predicted, actual = [], []
    for path in scored:
        frame = pd.read_csv(path)
        if "anomaly" not in frame:
            continue
        predicted.append(frame["is_anomaly"].to_numpy()[TRAIN_ROWS:])
        actual.append(frame["anomaly"].to_numpy()[TRAIN_ROWS:].astype(int))
    p, a = np.concatenate(predicted).astype(bool), np.concatenate(actual).astype(bool)
    tp, fp, fn, tn = (p & a).sum(), (p & ~a).sum(), (~p & a).sum(), (~p & ~a).sum()
    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    return {"runs": len(predicted), "test_rows": int(len(p)), "f1": round(float(2 * precision * recall / max(1e-12, precision + recall)), 4),
            "far_pct": round(float(100 * fp / max(1, fp + tn)), 2), "mar_pct": round(float(100 * fn / max(1, fn + tp)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "skab")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        started = time.time()
        scored = [p for p in score_path(args.data, Path(out), "datetime", None) if "anomaly-free" not in str(p)]
        result = grade(scored, Path(out), args.data)
        result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
