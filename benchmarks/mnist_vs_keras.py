"""Benchmark: the seed's Keras MNIST program against smallvision's seed-mnist and fast-mnist.

Runs them alternately (Keras, seed-mnist, fast-mnist; again) in one invocation, so the
machine's mood affects all alike, and prints training seconds, test accuracy and the
ratio of each smallvision recipe's training time to Keras'. With `--cpus as-is avx2` it does all of
that twice, the second time with both sides playing an AVX2-only CPU (a laptop without native bf16:
ONEDNN_MAX_CPU_ISA=AVX2 for both oneDNNs, ATEN_CPU_CAPABILITY=avx2 for PyTorch), and prints each
ratio beside the unlimited one.

    python benchmarks/mnist_vs_keras.py [--rounds 2] [--cpus as-is avx2] [--data ../shared/datasets/mnist]

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

from keras_baseline import CPUS, ROOT, keras_python, save_results

ANCHOR = ROOT.parent / "shared" / "anchors" / "keras_mnist.py"


def run_keras(python: str, data: Path, cpu: str = "as-is") -> dict:
    done = subprocess.run([python, str(ANCHOR), str(data)], capture_output=True, text=True, check=True,
                          env={**os.environ, **CPUS[cpu], "TF_CPP_MIN_LOG_LEVEL": "2"})
    found = re.search(r"RESULT keras_mnist train_s=([\d.]+) test_acc=([\d.]+)", done.stdout)
    return {"train_seconds": float(found[1]), "test_accuracy": float(found[2])}


def run_smallvision(recipe: str, data: Path, seed: int, scratch: Path, extra: list[str] = (),
                    cpu: str = "as-is") -> dict:
    out = scratch / f"{recipe}-{seed}-{time.monotonic_ns()}"
    subprocess.run([sys.executable, "-m", "smallvision.cli", "train", "mnist", "--data", str(data), "--recipe", recipe,
                    "--seed", str(seed), "--out", str(out), "--quiet", *extra], check=True, capture_output=True, text=True,
                   env={**os.environ, **CPUS[cpu]})
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
                print(f"round {round_index + 1}  {name:<20} train {result['train_seconds']:6.1f} s  "
                      f"test accuracy {result['test_accuracy']:.4f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", nargs="+", default=["as-is"], choices=list(CPUS))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "mnist")
    args = parser.parse_args()
    python = keras_python()
    systems = {}
    for cpu in args.cpus:
        systems[f"keras seed {cpu}"] = lambda seed, scratch, cpu=cpu: run_keras(python, args.data, cpu)
        for recipe in ("seed-mnist", "fast-mnist"):
            systems[f"sv {recipe} {cpu}"] = (lambda seed, scratch, recipe=recipe, cpu=cpu:
                                             run_smallvision(recipe, args.data, seed, scratch, cpu=cpu))
    results = alternate(systems, args.rounds)
    print(f"\n{'':<22} {'train s (mean)':>14} {'test acc (mean)':>16} {'time / Keras':>13}")
    summary = {}
    for name, rows in results.items():
        cpu = name.rsplit(" ", 1)[1]
        keras_seconds = statistics.mean(r["train_seconds"] for r in results[f"keras seed {cpu}"])
        seconds = statistics.mean(r["train_seconds"] for r in rows)
        accuracy = statistics.mean(r["test_accuracy"] for r in rows)
        summary[name] = {"train_seconds": seconds, "test_accuracy": accuracy, "ratio_to_keras": seconds / keras_seconds,
                         "runs": rows}
        print(f"{name:<22} {seconds:>14.1f} {accuracy:>16.4f} {seconds / keras_seconds:>12.2f}x")
    save_results("mnist_vs_keras", summary)


if __name__ == "__main__":
    main()
