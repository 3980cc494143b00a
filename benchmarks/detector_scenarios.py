"""The unsupervised backfill detector against the causal rolling z-score on labelled synthetic scenarios.

Each scenario of ``training.scenarios`` and seed is scored by ``inference_pipeline.jobs.backfill.score_series``
(``BackfillSettings()`` defaults: 400 warm-up rows) and by ``rolling_zscore(values, 400)``; both are graded on the
graded rows only. Printed: per scenario the mean PR-AUC (average precision) of each, their difference and its minimum
over seeds, and the base rate (share of anomalous graded rows: a random score's PR-AUC); the mean over scenarios;
then calibration, pooled over every series of every scenario: each detector's best single-threshold F1, ours at the
fixed threshold 0.5 (score >= 0.5, the pipeline's rule) and of its debounced flags, and per series the share of
normal graded rows scoring >= 0.5 (min, median, max). ``--json``: last line, JSON of every figure.

    python benchmarks/detector_scenarios.py [--seeds 5] [--scenarios spikes,stuck] [--json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from inference_pipeline.jobs.backfill import BackfillSettings, score_series
from training.scenarios import SCENARIOS, best_f1, f1_at, pr_auc, rolling_zscore, scenario

WARMUP = 400
Z_WINDOW = 400


def run(names: list[str], seeds: int) -> dict:
    """Score every (scenario, seed) with both detectors and grade them."""
    per_scenario, pooled, false_alarm_shares = {}, {"labels": [], "ours": [], "z": [], "flags": []}, []
    for name in names:
        ours_ap, z_ap, base_rates = [], [], []
        for seed in range(seeds):
            series = scenario(name, seed, warmup=WARMUP)
            ours, flags = score_series(series.values, BackfillSettings())
            z = rolling_zscore(series.values, Z_WINDOW)
            graded, labels = series.graded, series.labels
            ours_ap.append(pr_auc(labels, ours, graded))
            z_ap.append(pr_auc(labels, z, graded))
            base_rates.append(float(labels[graded].mean()))
            false_alarm_shares.append(float((ours[graded & (labels == 0)] >= 0.5).mean()))
            for key, array in (("labels", labels), ("ours", ours), ("z", z), ("flags", flags)):
                pooled[key].append(array[graded])
        diff = np.array(ours_ap) - np.array(z_ap)
        per_scenario[name] = {"ours": float(np.mean(ours_ap)), "z": float(np.mean(z_ap)), "diff": float(diff.mean()),
                              "min_diff": float(diff.min()), "base_rate": float(np.mean(base_rates)),
                              "ours_by_seed": [round(x, 4) for x in ours_ap], "z_by_seed": [round(x, 4) for x in z_ap]}
    labels, ours, z, flags = (np.concatenate(pooled[key]) for key in ("labels", "ours", "z", "flags"))
    ours_f1, ours_threshold = best_f1(labels, ours)
    z_f1, z_threshold = best_f1(labels, z)
    shares = np.array(false_alarm_shares)
    calibration = {
        "ours_best_f1": ours_f1, "ours_best_threshold": ours_threshold,
        "z_best_f1": z_f1, "z_best_threshold": z_threshold,
        "ours_f1_at_0.5": f1_at(labels, ours, 0.5), "ours_flags_f1": f1_at(labels, flags, 1),
        "normal_share_over_0.5": {"min": float(shares.min()), "median": float(np.median(shares)),
                                  "max": float(shares.max())},
    }
    mean = {key: float(np.mean([row[key] for row in per_scenario.values()])) for key in ("ours", "z", "diff")}
    mean["min_diff"] = float(min(row["min_diff"] for row in per_scenario.values()))
    return {"seeds": seeds, "scenarios": per_scenario, "mean": mean, "calibration": calibration}


def print_table(result: dict) -> None:
    print(f"{'scenario':<20} {'ours PR-AUC':>11} {'z PR-AUC':>9} {'ours-z':>8} {'min(ours-z)':>12} {'base rate':>10}")
    for name, row in result["scenarios"].items():
        print(f"{name:<20} {row['ours']:>11.3f} {row['z']:>9.3f} {row['diff']:>+8.3f} {row['min_diff']:>+12.3f} "
              f"{row['base_rate']:>10.3f}")
    mean = result["mean"]
    print(f"{'mean':<20} {mean['ours']:>11.3f} {mean['z']:>9.3f} {mean['diff']:>+8.3f} {mean['min_diff']:>+12.3f}")
    cal = result["calibration"]
    shares = cal["normal_share_over_0.5"]
    print(f"\ncalibration, pooled over {result['seeds']} seed(s) x {len(result['scenarios'])} scenario(s):")
    print(f"  best single-threshold F1: ours {cal['ours_best_f1']:.3f} (at {cal['ours_best_threshold']:.4g}), "
          f"z-score {cal['z_best_f1']:.3f} (at {cal['z_best_threshold']:.4g})")
    print(f"  ours at the fixed threshold 0.5: F1 {cal['ours_f1_at_0.5']:.3f}; debounced flags F1 "
          f"{cal['ours_flags_f1']:.3f}")
    print(f"  normal graded rows scoring >= 0.5, per series: min {shares['min']:.3f}, median {shares['median']:.3f}, "
          f"max {shares['max']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per scenario (default 5)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenario names")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON on the last line")
    args = parser.parse_args()
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or args.seeds < 1:
        parser.error(f"unknown scenarios {unknown}" if unknown else "--seeds must be at least 1")
    started = time.time()
    result = run(names, args.seeds)
    result["seconds"] = round(time.time() - started, 1)
    print_table(result)
    print(f"\n{result['seconds']} s")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
