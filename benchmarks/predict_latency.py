"""How long a saved run takes to answer for one image: in Python (imports not counted) and as a command.

    python benchmarks/predict_latency.py RUN IMAGE [--repeats 3]

Prints the median of each over the repeats: load_run + predict in this process (smallvision, torch
and timm already imported), and `smallvision predict RUN IMAGE` as a whole new process.
"""

import argparse
import statistics
import subprocess
import sys
import time

import timm  # noqa: F401  (imported before timing: the figure leaves imports out)
import torch  # noqa: F401

import smallvision as sv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("image")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    in_process, as_command = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        label = sv.load_run(args.run).predict([args.image])[0]["label"]
        in_process.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "smallvision.cli", "predict", args.run, args.image], check=True,
                       capture_output=True)
        as_command.append(time.perf_counter() - start)
    print(f"load_run + predict, in Python: {statistics.median(in_process):.2f} s (median of {args.repeats}; "
          f"label {label})")
    print(f"`smallvision predict`, a whole process: {statistics.median(as_command):.2f} s")


if __name__ == "__main__":
    main()
