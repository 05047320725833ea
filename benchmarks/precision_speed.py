"""Benchmark: training speed of precision "auto" beside bf16 (every recipe's setting before auto) and fp32,
on this CPU as it is and playing an AVX2-only one (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2,
a laptop without native bf16).

Each measurement is a real `smallvision train` in its own process (the limits are read when PyTorch
starts), one epoch of a fixed number of steps; the figure is metrics.json's images per second of
training. Settings run in turn, round after round, so the machine's mood affects all alike; the
median of the rounds is printed, with auto's ratio to the other two.

    python benchmarks/precision_speed.py [--rounds 2] [--recipes seed-mnist fast-mnist catsdogs]
        [--cpus as-is avx2] [--precisions auto bf16 fp32] [--steps-scale 1]
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

import torch

from keras_baseline import CPUS, ROOT, save_results
from smallvision.precision import training_precision

DATA = ROOT.parent / "shared" / "datasets"
MNIST = ["mnist", "--data", str(DATA / "mnist")]
SOURCES = {"seed-mnist": MNIST, "fast-mnist": MNIST, "catsdogs": [str(DATA / "cats_and_dogs_small")]}
STEPS = {"seed-mnist": 200, "fast-mnist": 200, "catsdogs": 40}  # catsdogs' emulated bf16 is slow
PRECISIONS = ("auto", "bf16", "fp32")


def images_per_second(recipe: str, precision: str, cpu: str, scratch: Path, scale: float = 1.0) -> tuple[float, str]:
    out = scratch / f"{recipe}-{precision}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "smallvision.cli", "train", *SOURCES[recipe], "--recipe", recipe,
               "--precision", precision, "--epochs", "1", "--steps-per-epoch", str(round(STEPS[recipe] * scale)),
               "--out", str(out),
               "--quiet"]
    env = {**os.environ, **CPUS[cpu], "SMALLVISION_PROGRESS": "0"}
    subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["images_per_second"], metrics["precision"]


def played_cpu() -> str:
    """The CPU this process plays: run it under CPUS["avx2"]'s variables to play AVX2 in process."""
    return "avx2" if os.environ.get("ONEDNN_MAX_CPU_ISA") == "AVX2" else "as-is"


def in_process(recipes: list[str], precisions: list[str], rounds: int, scale: float) -> dict[tuple, list[float]]:
    """Images per second of `fit` for each precision, alternating in this process (the CPU it plays),
    the order turning every round: the same computation measured twice differs here by up to 20%
    between processes, much less inside one."""
    import smallvision as sv
    from smallvision.data.sources import open_source
    from smallvision.models import create_model
    from smallvision.loop import fit
    from smallvision.models import recipe_image_shape

    speeds: dict[tuple, list[float]] = {}
    for recipe_name in recipes:
        recipe = sv.load_recipe(recipe_name).replace(epochs=1, steps_per_epoch=round(STEPS[recipe_name] * scale))
        source = "mnist" if recipe_name.endswith("mnist") else SOURCES[recipe_name][0]
        train = open_source(source, DATA / "mnist", image_shape=recipe_image_shape(recipe)).train
        for round_index in range(rounds):
            turn = round_index % len(precisions)
            for precision in precisions[turn:] + precisions[:turn]:
                torch.manual_seed(0)
                network = recipe.network
                model = create_model(network.model, tuple(train.images.shape[1:]), train.num_classes, network.dropout)
                history = fit(model, train, recipe.replace(precision=precision), progress=False)
                speeds.setdefault((played_cpu(), recipe_name, precision), []).append(history.images_per_second)
                print(f"round {round_index + 1}  in-process {recipe_name:<11} {precision:<4} "
                      f"{history.images_per_second:8,.0f} img/s", flush=True)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--cpus", nargs="+", default=list(CPUS), choices=list(CPUS))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
                        help="leave bf16 out to skip the slow emulated runs; its ratios are then not printed")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="more steps per measurement, less noise")
    parser.add_argument("--in-process", action="store_true", help="every precision timed in this one process, "
                                                                  "alternating (AVX2: set its variables for the process)")
    args = parser.parse_args()
    speeds: dict[tuple, list[float]] = {}
    chosen: dict[tuple, str] = {}
    if args.in_process:
        args.cpus = [played_cpu()]
        speeds = in_process(args.recipes, args.precisions, args.rounds, args.steps_scale)
        chosen = {key: "fp32" if key[2] == "fp32" else training_precision(key[2], torch.device("cpu")).precision
                  for key in speeds}
    else:
        with tempfile.TemporaryDirectory() as scratch:
            for round_index in range(args.rounds):
                for cpu in args.cpus:
                    for recipe in args.recipes:
                        # The order turns every round: here whichever runs first in a group runs faster.
                        turn = round_index % len(args.precisions)
                        for precision in args.precisions[turn:] + args.precisions[:turn]:
                            speed, used = images_per_second(recipe, precision, cpu, Path(scratch), args.steps_scale)
                            speeds.setdefault((cpu, recipe, precision), []).append(speed)
                            chosen[(cpu, recipe, precision)] = used
                            print(f"round {round_index + 1}  {cpu:<6} {recipe:<11} {precision:<4} ({used})  "
                                  f"{speed:8,.0f} img/s", flush=True)
    print(f"\nmedian of {args.rounds} rounds, images/s of training (spread: lowest-highest)")
    summary = []
    for cpu in args.cpus:
        for recipe in args.recipes:
            medians = {p: statistics.median(speeds[(cpu, recipe, p)]) for p in args.precisions}
            spread = "  ".join(f"{p} {min(speeds[(cpu, recipe, p)]):,.0f}-{max(speeds[(cpu, recipe, p)]):,.0f}"
                               for p in args.precisions)
            ratios = "  ".join(f"auto/{p} {medians['auto'] / medians[p]:.2f}x" for p in args.precisions
                               if p != "auto" and "auto" in medians)
            print(f"{cpu:<6} {recipe:<11} auto resolves to {chosen[(cpu, recipe, 'auto')] if 'auto' in medians else '-'}"
                  f"  {'  '.join(f'{p} {v:,.0f}' for p, v in medians.items())}  {ratios}  ({spread})")
            summary.append({"cpu": cpu, "recipe": recipe, "steps": round(STEPS[recipe] * args.steps_scale),
                            "auto_resolved": chosen.get((cpu, recipe, "auto")),
                            "images_per_second": {p: speeds[(cpu, recipe, p)] for p in args.precisions}})
    save_results("precision_speed", {"rounds": args.rounds, "results": summary})


if __name__ == "__main__":
    main()
