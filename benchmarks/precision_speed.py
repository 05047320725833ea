"""Benchmark: training speed of precision "auto" beside bf16 (every recipe's setting before auto) and fp32,
on this CPU as it is and playing an AVX2-only one (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2,
a laptop without native bf16).

Each measurement is a real `smallvision train` in its own process (the limits are read when PyTorch
starts), one epoch of a fixed number of steps; the figure is metrics.json's images per second of
training. Settings run in turn, round after round, so the machine's mood affects all alike; the
median of the rounds is printed, with auto's ratio to the other two.

    python benchmarks/precision_speed.py [--rounds 2] [--recipes seed-mnist fast-mnist catsdogs]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from keras_baseline import ROOT, save_results

DATA = ROOT.parent / "shared" / "datasets"
MNIST = ["mnist", "--data", str(DATA / "mnist")]
SOURCES = {"seed-mnist": MNIST, "fast-mnist": MNIST, "catsdogs": [str(DATA / "cats_and_dogs_small")]}
STEPS = {"seed-mnist": 200, "fast-mnist": 200, "catsdogs": 40}  # catsdogs' emulated bf16 is slow
CPUS = {"as is": {}, "AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
PRECISIONS = ("auto", "bf16", "fp32")


def images_per_second(recipe: str, precision: str, cpu: str, scratch: Path) -> tuple[float, str]:
    out = scratch / f"{recipe}-{precision}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "smallvision.cli", "train", *SOURCES[recipe], "--recipe", recipe,
               "--precision", precision, "--epochs", "1", "--steps-per-epoch", str(STEPS[recipe]), "--out", str(out),
               "--quiet"]
    env = {**os.environ, **CPUS[cpu], "SMALLVISION_PROGRESS": "0"}
    subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["images_per_second"], metrics["precision"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--cpus", nargs="+", default=list(CPUS), choices=list(CPUS))
    args = parser.parse_args()
    speeds: dict[tuple, list[float]] = {}
    chosen: dict[tuple, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for cpu in args.cpus:
                for recipe in args.recipes:
                    for precision in PRECISIONS:
                        speed, used = images_per_second(recipe, precision, cpu, Path(scratch))
                        speeds.setdefault((cpu, recipe, precision), []).append(speed)
                        chosen[(cpu, recipe, precision)] = used
                        print(f"round {round_index + 1}  {cpu:<6} {recipe:<11} {precision:<4} ({used})  "
                              f"{speed:8,.0f} img/s", flush=True)
    print(f"\nmedian of {args.rounds} rounds, images/s of training")
    print(f"{'CPU played':<10} {'recipe':<11} {'auto (is)':>14} {'bf16 (before)':>14} {'fp32':>9} "
          f"{'auto/before':>12} {'auto/fp32':>10} {'before/fp32':>12}")
    summary = []
    for cpu in args.cpus:
        for recipe in args.recipes:
            auto, bf16, fp32 = (statistics.median(speeds[(cpu, recipe, p)]) for p in PRECISIONS)
            resolved = chosen[(cpu, recipe, "auto")]
            print(f"{cpu:<10} {recipe:<11} {auto:>8,.0f} {resolved:>5} {bf16:>14,.0f} {fp32:>9,.0f} "
                  f"{auto / bf16:>11.2f}x {auto / fp32:>9.2f}x {bf16 / fp32:>11.2f}x")
            summary.append({"cpu": cpu, "recipe": recipe, "steps": STEPS[recipe], "auto_resolved": resolved,
                            "images_per_second": {p: speeds[(cpu, recipe, p)] for p in PRECISIONS}})
    save_results("precision_speed", {"rounds": args.rounds, "results": summary})


if __name__ == "__main__":
    main()
