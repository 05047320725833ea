"""Benchmark: the same run in one process and in two (torch.distributed, gloo, on this CPU).

For each case, the largest weight difference between one process and two, beside the baseline that
says what rounding alone does: one process on one thread against one process on two threads (the
same computation, its sums taken in another order). Cases: seed-mnist on a 6,000-image MNIST slice in
fp32 after 1 step, 10 steps and one epoch; small_resnet (batch norm, synchronised across the processes)
on cats-vs-dogs photos at 64x64 (1,000 training photos) after 1 step and one epoch; and an augmented
recipe's test accuracy, one process against two.

    .venv/bin/python benchmarks/distributed_parity.py
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from keras_baseline import ROOT, save_results

MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
CATSDOGS = ROOT.parent / "shared" / "datasets" / "cats_and_dogs_small"


def make_mnist_slice(folder: Path, count: int) -> Path:
    from smallvision.data.idx import read_idx, write_idx

    folder.mkdir(parents=True)
    for name, n in (("train-images-idx3-ubyte.gz", count), ("train-labels-idx1-ubyte.gz", count),
                    ("t10k-images-idx3-ubyte.gz", 10000), ("t10k-labels-idx1-ubyte.gz", 10000)):
        write_idx(folder / name, read_idx(MNIST / name)[:count])
    return folder


def make_photo_slice(folder: Path, per_class: int) -> Path:
    for split, count in (("train", per_class), ("test", 250)):
        for name in ("cats", "dogs"):
            (folder / split / name).mkdir(parents=True)
            for file in sorted(os.listdir(CATSDOGS / split / name))[:count]:
                os.symlink(CATSDOGS / split / name / file, folder / split / name / file)
    return folder


def train(out: Path, source: Path, options: list[str], processes: int = 1, threads: int | None = None) -> dict:
    environment = {**os.environ, "SMALLVISION_PROGRESS": "0"}
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "smallvision.cli", "train", str(source), *options, "--out", str(out), "--quiet"]
    if processes > 1:
        command += ["--processes", str(processes)]
    started = time.perf_counter()
    subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL)
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    return {"seconds": time.perf_counter() - started, "test_accuracy": metrics.get("test_accuracy"),
            "weights": load_file(str(out / "model.safetensors"))}


def difference(a: dict, b: dict) -> float:
    return max(float((a["weights"][k].double() - b["weights"][k].double()).abs().max()) for k in a["weights"])


def case(scratch: Path, name: str, source: Path, options: list[str]) -> dict:
    one = train(scratch / f"{name}-one", source, options)
    two = train(scratch / f"{name}-two", source, options, processes=2)
    one_thread = train(scratch / f"{name}-one-thread", source, options, threads=1)
    result = {"one_vs_two_processes": difference(one, two), "two_threads_vs_one_thread": difference(one, one_thread),
              "test_accuracy_one": one["test_accuracy"], "test_accuracy_two": two["test_accuracy"]}
    print(f"{name}: largest weight difference, 1 process vs 2: {result['one_vs_two_processes']:.3g}; "
          f"baseline, 1 process on 2 threads vs 1 thread: {result['two_threads_vs_one_thread']:.3g} "
          f"(ratio {result['one_vs_two_processes'] / max(result['two_threads_vs_one_thread'], 1e-30):.2f}x); "
          f"test accuracy {one['test_accuracy']:.4f} vs {two['test_accuracy']:.4f}", flush=True)
    return result


def main() -> None:
    summary = {}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        digits = make_mnist_slice(scratch / "mnist-6000", 6000)
        seed = ["--epochs", "1", "--precision", "fp32"]
        for steps in ("1", "10", "0"):
            label = f"seed-mnist, {'one epoch' if steps == '0' else steps + ' steps'}"
            summary[label] = case(scratch, f"seed-{steps}", digits, seed + ["--steps-per-epoch", steps])
        photos = make_photo_slice(scratch / "photos", 500)
        resnet = ["--recipe", "catsdogs", "--image-size", "64", "--epochs", "1", "--precision", "fp32",
                  "--val-split", "0", "--dropout", "0"]
        for steps in ("1", "0"):
            label = f"small_resnet, {'one epoch' if steps == '0' else steps + ' step'}"
            summary[label] = case(scratch, f"resnet-{steps}", photos, resnet + ["--steps-per-epoch", steps])
        augmented = ["--recipe", "fast-mnist", "--epochs", "2", "--precision", "fp32", "--set", "rotation_range=10",
                     "--set", "width_shift_range=0.1", "--set", "height_shift_range=0.1"]
        summary["fast-mnist augmented, 2 epochs"] = result = case(scratch, "augmented", digits, augmented)
        print(f"augmented: test accuracy 1 process {result['test_accuracy_one']:.4f}, 2 processes "
              f"{result['test_accuracy_two']:.4f}: difference "
              f"{abs(result['test_accuracy_one'] - result['test_accuracy_two']):.4f} (bar 0.002)")
    save_results("distributed_parity", summary)


if __name__ == "__main__":
    main()
