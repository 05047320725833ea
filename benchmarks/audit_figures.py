"""Benchmark: issue 25's figures for `data audit`, on copies of the shared data with planted faults.

    python benchmarks/audit_figures.py photos   # cats-vs-dogs: 10% of each class's train photos moved to the other
                                                # class, 25 altered copies of test photos put in train; the audit's
                                                # precision and recall on the moved ones, the leaks found, and its
                                                # time from a cold cache beside the features' time alone (own cold cache)
    python benchmarks/audit_figures.py digits   # MNIST with 5% of the train labels changed: precision and recall
    python benchmarks/audit_figures.py clean    # audit the noisy photos, apply every suggestion unreviewed, train
                                                # catsdogs-finetune on the clean, the noisy and the cleaned folder
    python benchmarks/audit_figures.py imbalance [--epochs N]  # dogs cut to 100 (cats 1,000): class_weight auto
                                                # against none, for catsdogs and catsdogs-finetune

Every folder is built under --work (default: a temporary directory), by hard links where the file is unchanged
(the shared set is never touched). Figures print beside their baselines, as ratios where there is one.
"""

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("SMALLVISION_DATA", ROOT.parent / "shared" / "datasets"))
CATSDOGS = SHARED / "cats_and_dogs_small"


def link_tree(source: Path, target: Path) -> None:
    """A copy of `source` made of hard links (or copies across file systems)."""
    for directory, _, names in os.walk(source):
        into = target / Path(directory).relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        for name in names:
            try:
                os.link(Path(directory) / name, into / name)
            except OSError:
                shutil.copy2(Path(directory) / name, into / name)


def plant_label_noise(root: Path, fraction: float, seed: int) -> set[str]:
    """Move `fraction` of each class's train photos into the other class's folder; their new relative paths."""
    rng = random.Random(seed)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    moved = set()
    plans = []
    for name in classes:
        files = sorted((root / "train" / name).iterdir())
        chosen = rng.sample(files, round(fraction * len(files)))
        other = rng.choice([c for c in classes if c != name])
        plans += [(path, root / "train" / other / path.name) for path in chosen]
    for old, new in plans:
        os.rename(old, new)
        moved.add(new.relative_to(root).as_posix())
    return moved


def plant_leaks(root: Path, count: int, seed: int) -> dict[str, str]:
    """`count` test photos copied into train (their class folder), each resized to 85%, re-encoded at JPEG
    quality 70, cropped 4 pixels a side and brightened by 15%: {copy's path: original's path}."""
    from PIL import Image, ImageEnhance

    rng = random.Random(seed)
    tests = sorted(p for p in (root / "test").rglob("*.jpg"))
    planted = {}
    for original in rng.sample(tests, count):
        with Image.open(original) as image:
            image = image.convert("RGB")
            width, height = image.size
            image = image.resize((round(width * 0.85), round(height * 0.85)), Image.Resampling.BILINEAR)
            image = image.crop((4, 4, image.width - 4, image.height - 4))
            image = ImageEnhance.Brightness(image).enhance(1.15)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=70)
        copy = root / "train" / original.parent.name / f"leak-{original.name}"
        copy.write_bytes(buffer.getvalue())
        planted[copy.relative_to(root).as_posix()] = original.relative_to(root).as_posix()
    return planted


def precision_recall(flagged: set[str], planted: set[str]) -> tuple[float, float]:
    hits = len(flagged & planted)
    return hits / max(len(flagged), 1), hits / max(len(planted), 1)


def features_alone(folder: Path, cache: Path) -> float:
    """Decoding and computing catsdogs-features' frozen features of every split, from a cold cache: what the
    audit is compared with."""
    from smallvision.audit import backbone_features
    from smallvision.data.sources import open_source
    from smallvision.inference import resolve_device
    from smallvision.models import recipe_image_shape, with_backbone_preprocessing
    from smallvision.recipe import load_recipe

    started = time.perf_counter()
    recipe = with_backbone_preprocessing(load_recipe("catsdogs-features"))
    data = open_source(folder, None, 0.0, 0, 0.0, recipe_image_shape(recipe), cache, False, for_training=False)
    backbone_features(data, recipe, resolve_device("auto"), cache, False)
    return time.perf_counter() - started


def photos(work: Path) -> None:
    from smallvision.audit import audit

    folder = work / "noisy"
    link_tree(CATSDOGS, folder)
    moved = plant_label_noise(folder, 0.10, seed=0)
    leaks = plant_leaks(folder, 25, seed=0)
    print(f"planted: {len(moved)} train photos moved to the other class, {len(leaks)} altered test copies in train")
    baseline = features_alone(folder, work / "cache-features")
    started = time.perf_counter()
    result = audit(folder, work / "audit", cache_dir=work / "cache-audit", progress=False)
    seconds = time.perf_counter() - started
    names, splits = result.catalogue.names, result.catalogue.splits
    flagged_train = {names[i] for i, _, _ in result.finding.label_issues if splits[i] == "train"}
    precision, recall = precision_recall(flagged_train, moved)
    print(f"label errors (train): {len(flagged_train)} flagged, {len(flagged_train & moved)} of them moved: "
          f"precision {precision:.3f}, recall {recall:.3f} (bar: 0.90 each; confident learning's CIFAR-10 at 20% "
          f"noise: 0.65, 0.93)")
    found = 0
    for group in result.leaks:
        members = {names[i] for i, _ in group}
        found += sum(1 for copy, original in leaks.items() if copy in members and original in members)
    print(f"leaks: {found} of {len(leaks)} altered copies found in a group with their test original (bar: 24); "
          f"{len(result.finding.duplicate_groups)} groups in all, {len(result.leaks)} across splits")
    print(f"time: audit {seconds:.1f} s from a cold cache; features alone {baseline:.1f} s (their own cold cache); "
          f"ratio {seconds / baseline:.2f} (bar: 1.2, and 180 s); the audit's parts: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    print(f"the findings: {result.directory}")


def digits(work: Path) -> None:
    import numpy as np

    from smallvision.audit import audit
    from smallvision.data.idx import read_idx, write_idx
    from smallvision.data.mnist import locate_mnist

    source = locate_mnist(None)
    folder = work / "mnist-noisy"
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    label_file = next(p for p in folder.iterdir() if "train" in p.name and "labels" in p.name)
    labels = read_idx(label_file).copy()
    rng = np.random.default_rng(0)
    changed = rng.choice(len(labels), round(0.05 * len(labels)), replace=False)
    labels[changed] = (labels[changed] + rng.integers(1, 10, len(changed))) % 10  # always another digit
    label_file.unlink()
    write_idx(folder / label_file.name.removesuffix(".gz"), labels.astype(np.uint8))
    started = time.perf_counter()
    result = audit(folder, work / "audit-digits", cache_dir=work / "cache-digits", progress=False)
    seconds = time.perf_counter() - started
    names, splits = result.catalogue.names, result.catalogue.splits
    flagged = {int(names[i]) for i, _, _ in result.finding.label_issues if splits[i] == "train"}
    precision, recall = precision_recall(flagged, set(changed.tolist()))
    print(f"MNIST train, {len(changed):,} labels changed (5%): {len(flagged):,} flagged, precision {precision:.3f}, "
          f"recall {recall:.3f} (bar: 0.90 each); {seconds:.0f} s ({result.how})")


def train_run(folder: Path, recipe: str, out: Path, cache: Path, *extra: str) -> dict:
    command = [sys.executable, "-m", "smallvision", "train", str(folder), "--recipe", recipe, "--out", str(out),
               "--cache-dir", str(cache), "--quiet", *extra]
    subprocess.run(command, check=True, env={**os.environ, "SMALLVISION_PROGRESS": "0"})
    return json.loads((out / "metrics.json").read_text())


def clean(work: Path) -> None:
    from smallvision.audit import audit
    from smallvision.journal import apply_actions

    noisy = work / "noisy"
    link_tree(CATSDOGS, noisy)
    plant_label_noise(noisy, 0.10, seed=0)
    cleaned = work / "cleaned"
    link_tree(noisy, cleaned)
    result = audit(cleaned, work / "audit-clean", cache_dir=work / "cache", progress=False)
    report = apply_actions(result.directory / "label_issues.csv", accept_all=True)
    print(f"applied unreviewed: {report.summary()}")
    figures = {}
    for name, folder in (("clean", CATSDOGS), ("noisy", noisy), ("cleaned", cleaned)):
        metrics = train_run(folder, "catsdogs-finetune", work / f"run-{name}", work / "cache")
        figures[name] = metrics["test_accuracy"]
        print(f"catsdogs-finetune on the {name} folder: test accuracy {metrics['test_accuracy']:.4f}", flush=True)
    print(f"cleaned - clean: {figures['cleaned'] - figures['clean']:+.4f} (bar: within 0.005); noisy - clean: "
          f"{figures['noisy'] - figures['clean']:+.4f}")


def imbalance(work: Path, epochs: int | None) -> None:
    folder = work / "imbalanced"
    link_tree(CATSDOGS, folder)
    dogs = sorted((folder / "train" / "dogs").iterdir())
    for path in random.Random(0).sample(dogs, len(dogs) - 100):
        path.unlink()  # a hard link of the shared file: the shared set keeps it
    print("train: cats 1,000, dogs 100; validation and test balanced (500 and 500)")
    for recipe in ("catsdogs", "catsdogs-finetune"):
        extra = ["--epochs", str(epochs)] if epochs and recipe == "catsdogs" else []
        scores = {}
        for weight in ("auto", "none"):
            metrics = train_run(folder, recipe, work / f"run-{recipe}-{weight}", work / "cache", "--class-weight",
                                weight, *extra)
            scores[weight] = metrics["test_balanced_accuracy"]
            print(f"{recipe} class_weight {weight}: test balanced accuracy {metrics['test_balanced_accuracy']:.4f}, "
                  f"recall {metrics['test_recall']}, accuracy {metrics['test_accuracy']:.4f}", flush=True)
        print(f"{recipe}: auto - none = {scores['auto'] - scores['none']:+.4f} "
              f"(bar: +0.03 for catsdogs, not below 0 for catsdogs-finetune)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=("photos", "digits", "clean", "imbalance"))
    parser.add_argument("--work", help="where the folders, caches and runs go (default: a temporary directory)")
    parser.add_argument("--epochs", type=int, help="imbalance: catsdogs' epochs (default: the recipe's)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="audit-figures-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work: {work}", flush=True)
    {"photos": lambda: photos(work), "digits": lambda: digits(work), "clean": lambda: clean(work),
     "imbalance": lambda: imbalance(work, args.epochs)}[args.figure]()


if __name__ == "__main__":
    main()
