"""Benchmark: a network written as layers trains at the speed of the same network by name.

Runs `seed-mnist` for one epoch of a fixed number of steps three ways, in turn, round after round:
mnist_convnet by name, mnist_convnet written out as layers (`--layers`), and, with `--baseline-src`,
mnist_convnet by name from an earlier checkout's code (the speed before layer lists), and prints
the median images per second of each with its ratio to the named network's.

    .venv/bin/python benchmarks/layers_speed.py [--rounds 3] [--steps 400] [--baseline-src /tmp/old/src]

With `--in-process`, the two networks of this checkout are timed in one process instead, each `fit`
of `--steps` steps alternating with the other's, which goes first flipping every round, so that
the machine's drift from minute to minute falls on both alike.
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

MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
SEED_MNIST_LAYERS = ("Conv2D(32, (3, 3), activation='relu') MaxPooling2D((2, 2)) "
                     "Conv2D(64, (3, 3), activation='relu') MaxPooling2D((2, 2)) "
                     "Conv2D(64, (3, 3), activation='relu') Flatten() "
                     "Dense(64, activation='relu') Dense(10, activation='softmax')")


def images_per_second(extra: list[str], steps: int, scratch: Path, source_dir: str | None = None) -> float:
    out = scratch / f"run-{time.monotonic_ns()}"
    env = {**os.environ, "SMALLVISION_PROGRESS": "0"}
    if source_dir:
        env["PYTHONPATH"] = source_dir
    subprocess.run([sys.executable, "-m", "smallvision.cli", "train", "mnist", "--data", str(MNIST), "--recipe",
                    "seed-mnist", "--epochs", "1", "--steps-per-epoch", str(steps), "--out", str(out), "--quiet",
                    *extra], check=True, capture_output=True, text=True, env=env)
    return json.loads((out / "metrics.json").read_text())["images_per_second"]


def in_process(rounds: int, steps: int) -> dict[str, list[float]]:
    """Images per second of `fit`, alternating the named network and its written form in one process."""
    import torch

    import smallvision as sv
    from smallvision.data.sources import open_source
    from smallvision.models import build_network, create_model
    from smallvision.models.layer_text import parse_layers
    from smallvision.loop import fit

    train = open_source("mnist", MNIST).train
    recipe = sv.load_recipe("seed-mnist").replace(epochs=1, steps_per_epoch=steps)
    builders = {"by name": lambda: create_model("mnist_convnet"),
                "as layers": lambda: build_network(parse_layers(SEED_MNIST_LAYERS), (1, 28, 28), 10)}
    speeds = {name: [] for name in builders}
    for round_index in range(rounds):
        # The order flips every round: on this machine whichever runs first in a pair runs faster.
        order = list(builders.items()) if round_index % 2 == 0 else list(builders.items())[::-1]
        for name, build in order:
            torch.manual_seed(0)
            history = fit(build(), train, recipe, progress=False)
            speeds[name].append(history.images_per_second)
            print(f"round {round_index + 1}  {name:<16} {speeds[name][-1]:8,.0f} img/s", flush=True)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--baseline-src", help="an earlier checkout's src/ directory: its named network is the "
                                               "speed before layer lists")
    parser.add_argument("--in-process", action="store_true", help="time both networks in this process")
    args = parser.parse_args()
    if args.in_process:
        report(in_process(args.rounds, args.steps), args)
        return
    systems = {"by name": ([], None), "as layers": (["--layers", SEED_MNIST_LAYERS], None)}
    if args.baseline_src:
        systems["by name, before"] = ([], args.baseline_src)
    speeds = {name: [] for name in systems}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            for name, (extra, source_dir) in systems.items():
                speeds[name].append(images_per_second(extra, args.steps, Path(scratch), source_dir))
                print(f"round {round_index + 1}  {name:<16} {speeds[name][-1]:8,.0f} img/s", flush=True)
    report(speeds, args)


def report(speeds: dict[str, list[float]], args) -> None:
    named = statistics.median(speeds["by name"])
    print(f"\nmedian of {args.rounds} rounds of {args.steps} steps, images/s of training")
    for name, values in speeds.items():
        print(f"{name:<16} {statistics.median(values):8,.0f}  {statistics.median(values) / named:.3f}x by name")
    save_results("layers_speed", {"steps": args.steps, "images_per_second": speeds})


if __name__ == "__main__":
    main()
