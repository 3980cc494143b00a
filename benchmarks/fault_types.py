"""The simulator's fault types through the default config, over several fleets (``inference_pipeline.jobs.
fault_benchmark``): incident recall per fault type, incident precision, explanation accuracy. Last line: JSON.

    python benchmarks/fault_types.py [--seeds 5] [--devices 12] [--hours 1] [--fault-rate 4] [--config FILE]

Defaults: 5 seeds x 12 devices x 1 h (the default run's fleet) at 4 faults per device-hour: about 12 faults of each
type per seed, 60 over the five.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from inference_pipeline.config import load_config
from inference_pipeline.jobs.fault_benchmark import fault_benchmark, fault_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--devices", type=int, default=12)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--fault-rate", type=float, default=4.0, help="faults per device-hour")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        result = fault_benchmark(load_config(args.config), list(range(args.seeds)), args.devices, 3600 * args.hours,
                                 args.fault_rate, Path(work))
    print(fault_table(result))
    print(f"{time.time() - started:.0f} s")
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
