"""Equivalence check for a refactoring: every built-in recipe trains a few steps in fp32, and the weights it ends
with are digested (sha256 of every tensor of model.safetensors, by name), so two versions of the package can be
held to the same weights, bit for bit.

Only `smallvision.train(source, recipe=NAME, out=..., progress=False, cache_dir=..., **flat_overrides)` and the
run's model.safetensors are used: the API every version has, so the script runs against whichever `smallvision`
is on PYTHONPATH. The digits recipes train on a slice of MNIST (SMALLVISION_DATA/mnist), the photo recipes on a
few dozen cats-vs-dogs photos (SMALLVISION_DATA/cats_and_dogs_small); the backbones include a fine-tuning stage
(one epoch of 2 steps). Each version gets a fresh decode and feature cache, so nothing one computed is reused by
the other.

    PYTHONPATH=OLD/src python benchmarks/refactor_parity.py train before.json
    PYTHONPATH=NEW/src python benchmarks/refactor_parity.py train after.json
    python benchmarks/refactor_parity.py compare before.json after.json     # "same" or "DIFFERENT" per recipe
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

STEPS = 3
BACKBONE_STEPS = 2  # stage two reuses steps_per_epoch, so both stages take 2 steps
PHOTOS = {"train": 16, "validation": 4, "test": 4}  # per class


def data_root() -> Path:
    return Path(os.environ.get("SMALLVISION_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets")


def mnist_slice(directory: Path) -> Path:
    from smallvision.data.idx import read_idx, write_idx

    mnist = data_root() / "mnist"
    directory.mkdir(parents=True)
    for kind, count in (("train", 1000), ("t10k", 500)):
        for part in ("images-idx3", "labels-idx1"):
            write_idx(directory / f"{kind}-{part}-ubyte", read_idx(mnist / f"{kind}-{part}-ubyte.gz")[:count])
    return directory


def photo_slice(directory: Path) -> Path:
    """The first photos of each class and split (sorted by name), copied: the same few dozen every time."""
    cats_dogs = data_root() / "cats_and_dogs_small"
    for split, count in PHOTOS.items():
        for folder in sorted(p for p in (cats_dogs / split).iterdir() if p.is_dir()):
            target = directory / split / folder.name
            target.mkdir(parents=True)
            for photo in sorted(folder.iterdir())[:count]:
                shutil.copy(photo, target / photo.name)
    return directory


def weights_digest(path: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    each = {}
    whole = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        data = tensor.view(-1).view(dtype=torch.uint8).numpy().tobytes() if tensor.numel() else b""
        digest = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode() + data).hexdigest()
        each[name] = digest
        whole.update(digest.encode())
    return {"digest": whole.hexdigest(), "tensors": each}


def setting(recipe, flat: str, dotted: str):
    """A recipe's field, in a flat Recipe (before issue 23) or a grouped one."""
    if hasattr(recipe, flat):
        return getattr(recipe, flat)
    group, field = dotted.split(".")
    return getattr(getattr(recipe, group), field)


def train_all(out: Path, only: list[str] | None, keep: Path | None) -> None:
    import smallvision as sv
    from smallvision.recipe import builtin_recipes

    recipes = {name: recipe for name, recipe in builtin_recipes().items() if not only or name in only}
    results = {"package": str(Path(sv.__file__).resolve().parent), "recipes": {}}
    with tempfile.TemporaryDirectory(prefix="parity-") as scratch:
        scratch = Path(keep) if keep else Path(scratch)
        digits, photos = mnist_slice(scratch / "mnist"), photo_slice(scratch / "photos")
        for name in recipes:
            recipe = recipes[name]
            backbone = setting(recipe, "backbone", "network.backbone")
            overrides = dict(epochs=1, steps_per_epoch=BACKBONE_STEPS if backbone else STEPS, precision="fp32",
                             device="cpu", seed=0)
            if backbone:
                overrides.update(fine_tune_blocks=setting(recipe, "fine_tune_blocks", "fine_tune.blocks") or 1,
                                 fine_tune_epochs=1)
            source = digits if "mnist" in name else photos
            started = time.perf_counter()
            run = sv.train(str(source), recipe=name, out=str(scratch / "runs" / name), progress=False,
                           cache_dir=str(scratch / "cache"), **overrides)
            digest = weights_digest(run.path / "model.safetensors")
            digest.update(overrides=overrides, seconds=round(time.perf_counter() - started, 1),
                          test_accuracy=run.metrics.get("test_accuracy"))
            results["recipes"][name] = digest
            print(f"{name:28} {digest['digest'][:16]}  {digest['seconds']:6.1f}s", flush=True)
    out.write_text(json.dumps(results, indent=2))


def compare(before: Path, after: Path) -> int:
    first, second = (json.loads(Path(p).read_text())["recipes"] for p in (before, after))
    different = 0
    for name in sorted(set(first) | set(second)):
        if name not in first or name not in second:
            print(f"{name:28} only in {before if name in first else after}")
            different += 1
            continue
        same = first[name]["digest"] == second[name]["digest"]
        print(f"{name:28} {'same' if same else 'DIFFERENT'}")
        if not same:
            different += 1
            changed = [t for t in first[name]["tensors"] if first[name]["tensors"][t] != second[name]["tensors"].get(t)]
            print(f"    {len(changed)} tensors differ, e.g. {', '.join(changed[:3])}")
    return 1 if different else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    train = sub.add_parser("train", help="train every built-in recipe a few steps and write the digests")
    train.add_argument("out", type=Path)
    train.add_argument("--recipes", help="comma-separated names (default: every built-in)")
    train.add_argument("--keep", type=Path, help="keep the runs and data in this (new) directory")
    check = sub.add_parser("compare", help="say per recipe whether two digest files agree")
    check.add_argument("before", type=Path)
    check.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.mode == "compare":
        return compare(args.before, args.after)
    train_all(args.out, args.recipes.split(",") if args.recipes else None, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
