"""Benchmark: how close training runs to this CPU's (or GPU's) limit, recipe by recipe.

For each recipe: the FLOPs of one training step per image (counted by torch.utils.flop_counter: the
convolutions and matrix products, forward and backward; a multiply-add is two), the images per second
a real `smallvision train` reaches (one epoch of a fixed number of steps, in its own process, the
recipe's own number format; a backbone recipe's fine-tuning stage), their product in GFLOP/s, and the
machine's own peak measured in the same run (the best of large matrix products, fp32 and, where the CPU
computes it natively, bf16). With `--old CHECKOUT` the same is measured for another checkout (the code
before a change) in the same run, alternating, and each side's figures are printed with new/old; each side's FLOPs
and batch size are its own code's (a recipe's network may change between the two).

    python benchmarks/utilization.py [--recipes seed-mnist fast-mnist catsdogs catsdogs-finetune]
                                     [--old ../before] [--rounds 1] [--steps-scale 1]
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# the recipes' sources and a real training in its own process, as the refactor benchmark runs them
from refactor_speed import MNIST, SOURCES, train_once  # noqa: E402

STEPS = {"seed-mnist": 400, "fast-mnist": 200, "catsdogs": 40, "catsdogs-finetune": 12, "seed-catsdogs": 30,
         "seed-catsdogs-augment": 30}  # a backbone recipe: stage one's head briefly, the fine-tuning stage measured


STEP_FLOPS = """
import json, sys
from smallvision.flops import training_flops
from smallvision.models import recipe_image_shape, recipe_model, with_backbone_preprocessing
from smallvision.recipe import load_recipe

recipe = with_backbone_preprocessing(load_recipe(sys.argv[1]))
shape = recipe_image_shape(recipe) or (1, 28, 28)  # digits from IDX files keep their own size
model = recipe_model(recipe, shape, int(sys.argv[2]), pretrained=False)
if recipe.network.backbone:
    model.freeze_backbone()
    model.unfreeze_last_blocks(recipe.fine_tune.blocks)
print(json.dumps(training_flops(model, shape)))
"""


def step_flops(checkout: Path, recipe_name: str) -> float:
    """FLOPs per image of the recipe's training step (for a backbone, the fine-tuning stage's), as
    `checkout`'s code has them: a recipe's network may differ between two checkouts (fast-mnist's did), so
    each side is counted by its own code, in a process of its own."""
    classes = 10 if SOURCES[recipe_name] is MNIST else 2
    done = subprocess.run([sys.executable, "-c", STEP_FLOPS, recipe_name, str(classes)], check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(checkout / "src")})
    return json.loads(done.stdout)


def images_per_second(checkout: Path, recipe: str, scratch: Path, cache: Path, scale: float) -> float:
    """A real training's last stage (the recipe's own number format), its steps x batch over its seconds
    (history.csv; the batch from the run's own recipe.toml, as that checkout has the recipe)."""
    steps = max(1, round(STEPS[recipe] * scale))
    run = train_once(checkout, recipe, steps, scratch, cache)
    with open(run / "history.csv") as rows:
        last = list(csv.DictReader(rows))[-1]
    batch_size = tomllib.loads((run / "recipe.toml").read_text())["optimizer"]["batch_size"]
    return steps * batch_size / float(last["seconds"])


def main() -> None:
    import torch

    from smallvision.flops import matmul_peak
    from smallvision.precision import training_precision

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["seed-mnist", "fast-mnist", "catsdogs", "catsdogs-finetune"])
    parser.add_argument("--old", type=Path, help="another checkout, measured in the same run (its src/ is imported)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating measurements per side; medians printed")
    parser.add_argument("--steps-scale", type=float, default=1.0)
    args = parser.parse_args()

    precision = training_precision("auto", torch.device("cpu")).precision
    peaks = {"fp32": matmul_peak(torch.float32, seconds=2.0)}
    if precision == "bf16":
        peaks["bf16"] = matmul_peak(torch.bfloat16, seconds=2.0)
    print(f"{torch.get_num_threads()} threads; trains in {precision}; matmul peak "
          + ", ".join(f"{kind} {value:.0f} GFLOP/s" for kind, value in peaks.items()), flush=True)
    sides = {"new": ROOT} | ({"old": args.old.resolve()} if args.old else {})
    header = f"{'recipe':<20} " + " ".join(
        f"{side + ' MFLOP/img':>14} {side + ' img/s':>10} {side + ' GFLOP/s':>12} {side + ' use':>8}" for side in sides)
    rows = []
    with tempfile.TemporaryDirectory(prefix="utilization-") as scratch:
        cache = Path(scratch) / "cache"
        for recipe in args.recipes:
            flops = {side: step_flops(checkout, recipe) for side, checkout in sides.items()}
            images_per_second(ROOT, recipe, Path(scratch), cache, 0.25)  # warm the decode and features caches
            figures = {side: [] for side in sides}
            for round_number in range(args.rounds):
                order = list(sides) if round_number % 2 == 0 else list(sides)[::-1]
                for side in order:
                    figures[side].append(images_per_second(sides[side], recipe, Path(scratch), cache,
                                                           args.steps_scale))
            cells = []
            for side in sides:
                rate = statistics.median(figures[side])
                achieved = flops[side] * rate / 1e9
                cells.append(f"{flops[side] / 1e6:>14.1f} {rate:>10,.0f} {achieved:>12.1f} {achieved / peaks[precision]:>8.0%}")
            line = f"{recipe:<20} " + " ".join(cells)
            if args.old:
                new, old = (statistics.median(figures[s]) for s in ("new", "old"))
                line += f"   new/old {new / old:.2f}x"
            rows.append(line)
            print(line, flush=True)
    print()
    print(header)
    print("\n".join(rows))
    print(f"(use: achieved GFLOP/s over the {precision} matmul peak measured above)")


if __name__ == "__main__":
    main()
