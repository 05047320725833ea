"""Benchmark: training speed of this checkout against another one (the code before a refactor), recipe by
recipe: images per second of training within a few percent, or the refactor cost speed.

Each measurement is a real `smallvision train` in its own process, one epoch of a fixed number of steps in
fp32 (what an AVX2 laptop trains in), with `PYTHONPATH` pointing at one checkout's `src/`; the two
checkouts take turns, round after round (old, new, new, old, ...), so the machine's mood falls on both
alike. Printed: each side's median images/s (metrics.json's `images_per_second`) and new/old.

    git worktree add ../before <commit>
    python benchmarks/refactor_speed.py --old ../before [--rounds 4] [--recipes seed-mnist catsdogs catsdogs-finetune]
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

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SMALLVISION_DATA", ROOT.parent / "shared" / "datasets"))
MNIST = ["mnist", "--data", str(DATA / "mnist")]
PHOTOS = [str(DATA / "cats_and_dogs_small")]
SOURCES = {"seed-mnist": MNIST, "fast-mnist": MNIST, "catsdogs": PHOTOS, "catsdogs-finetune": PHOTOS,
           "catsdogs-features": PHOTOS, "seed-catsdogs": PHOTOS, "seed-catsdogs-augment": PHOTOS}
STEPS = {"seed-mnist": 300, "fast-mnist": 300, "catsdogs": 30, "catsdogs-finetune": 6, "catsdogs-features": 30,
         "seed-catsdogs": 30, "seed-catsdogs-augment": 30}
EXTRA = {"catsdogs-finetune": ["--set", "fine_tune_epochs=1"]}  # stage one's head, then one epoch of fine-tuning


def train_once(checkout: Path, recipe: str, steps: int, scratch: Path, cache: Path, *flags: str) -> Path:
    """One real `smallvision train` of one epoch of `steps` steps, in its own process with `checkout`'s src/
    imported; its run directory. `cache` is shared, so decoding (and a backbone's features) happen once."""
    out = scratch / f"{recipe}-{time.monotonic_ns()}"
    command = [sys.executable, "-c", "import sys; from smallvision.cli import main; sys.exit(main())", "train",
               *SOURCES[recipe], "--recipe", recipe, "--epochs", "1", "--steps-per-epoch", str(steps),
               "--out", str(out), "--quiet", "--cache-dir", str(cache), *EXTRA.get(recipe, []), *flags]
    environment = {**os.environ, "PYTHONPATH": str(checkout / "src"), "SMALLVISION_PROGRESS": "0"}
    subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL, cwd=scratch)
    return out


def images_per_second(checkout: Path, recipe: str, scratch: Path, cache: Path, scale: float) -> float:
    out = train_once(checkout, recipe, max(1, round(STEPS[recipe] * scale)), scratch, cache, "--precision", "fp32")
    return json.loads((out / "metrics.json").read_text())["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, type=Path, help="the other checkout (its src/ is imported)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--recipes", nargs="+", default=["seed-mnist", "catsdogs", "catsdogs-finetune"])
    parser.add_argument("--steps-scale", type=float, default=1.0)
    args = parser.parse_args()
    sides = {"old": args.old.resolve(), "new": ROOT}
    with tempfile.TemporaryDirectory(prefix="refactor-speed-") as scratch:
        cache = Path(scratch) / "cache"  # decoded once (and a backbone's features once), then shared
        for recipe in args.recipes:
            images_per_second(ROOT, recipe, Path(scratch), cache, 0.2)  # warm the decode and features caches
            figures = {"old": [], "new": []}
            for round_number in range(args.rounds):
                order = ["old", "new"] if round_number % 2 == 0 else ["new", "old"]
                for side in order:
                    figures[side].append(images_per_second(sides[side], recipe, Path(scratch), cache, args.steps_scale))
            old, new = statistics.median(figures["old"]), statistics.median(figures["new"])
            print(f"{recipe:18s} old {old:8.1f} img/s  new {new:8.1f} img/s  new/old {new / old:.3f}  "
                  f"(rounds: old {', '.join(f'{v:.0f}' for v in figures['old'])}; "
                  f"new {', '.join(f'{v:.0f}' for v in figures['new'])})", flush=True)


if __name__ == "__main__":
    main()
