"""Benchmark: the seed's Keras MNIST program against smallvision's seed-mnist and fast-mnist.

Runs them alternately (Keras, seed-mnist, fast-mnist; again) in one invocation, so the
machine's mood affects all alike, and prints training seconds, test accuracy and the
ratio of each smallvision recipe's training time to Keras'.

    python benchmarks/mnist_vs_keras.py [--rounds 2] [--data ../shared/datasets/mnist]

The Keras environment comes from benchmarks/keras-env (created on first use).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from keras_baseline import ROOT, keras_python, save_results

ANCHOR = ROOT.parent / "shared" / "anchors" / "keras_mnist.py"


def run_keras(python: str, data: Path) -> dict:
    done = subprocess.run([python, str(ANCHOR), str(data)], capture_output=True, text=True, check=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    found = re.search(r"RESULT keras_mnist train_s=([\d.]+) test_acc=([\d.]+)", done.stdout)
    return {"train_seconds": float(found[1]), "test_accuracy": float(found[2])}


def run_smallvision(recipe: str, data: Path, seed: int, scratch: Path, extra: list[str] = ()) -> dict:
    out = scratch / f"{recipe}-{seed}-{time.monotonic_ns()}"
    subprocess.run([sys.executable, "-m", "smallvision.cli", "train", "mnist", "--data", str(data), "--recipe", recipe,
                    "--seed", str(seed), "--out", str(out), "--quiet", *extra], check=True, capture_output=True, text=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"train_seconds": metrics["train_seconds"], "test_accuracy": metrics["test_accuracy"]}


def alternate(systems: dict, rounds: int) -> dict[str, list[dict]]:
    """Each system's results, measured in turn round after round (round i is seed i), so that the machine's
    mood affects all alike; a line is printed as each one finishes."""
    results = {name: [] for name in systems}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(rounds):
            for name, measure in systems.items():
                result = measure(round_index, Path(scratch))
                results[name].append(result)
                print(f"round {round_index + 1}  {name:<14} train {result['train_seconds']:6.1f} s  "
                      f"test accuracy {result['test_accuracy']:.4f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "mnist")
    args = parser.parse_args()
    python = keras_python()
    systems = {"keras seed": lambda seed, scratch: run_keras(python, args.data),
               "sv seed-mnist": lambda seed, scratch: run_smallvision("seed-mnist", args.data, seed, scratch),
               "sv fast-mnist": lambda seed, scratch: run_smallvision("fast-mnist", args.data, seed, scratch)}
    results = alternate(systems, args.rounds)
    keras_seconds = statistics.mean(r["train_seconds"] for r in results["keras seed"])
    print(f"\n{'':<14} {'train s (mean)':>14} {'test acc (mean)':>16} {'time / Keras':>13}")
    summary = {}
    for name, rows in results.items():
        seconds = statistics.mean(r["train_seconds"] for r in rows)
        accuracy = statistics.mean(r["test_accuracy"] for r in rows)
        summary[name] = {"train_seconds": seconds, "test_accuracy": accuracy, "ratio_to_keras": seconds / keras_seconds,
                         "runs": rows}
        print(f"{name:<14} {seconds:>14.1f} {accuracy:>16.4f} {seconds / keras_seconds:>12.2f}x")
    save_results("mnist_vs_keras", summary)


if __name__ == "__main__":
    main()
