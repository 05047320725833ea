"""Benchmark: a folder bigger than memory.

Builds a folder of N JPEG photos (default 100,000) from the shared cats-vs-dogs training photos
(random crops of at least half the photo, mirror images, scaled to 160-220 pixels a side), with small
validation/ and test/ splits of their own, then measures, each in its own process:
- the first decode into the cache at 160x160, images per second on every core;
- training from the memory-mapped cache (`--memory-budget 1GB`, the whole N-image folder) against the
  same network on a 20,000-image folder held in memory, the same number of steps: images per second,
  and their ratio (bar: at least 0.9x);
- the streamed run's peak resident memory (`/usr/bin/time -v`; bar: under 3 GB).

    .venv/bin/python benchmarks/big_folder.py [--images 100000] [--keep DIR]
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

from keras_baseline import ROOT, save_results

CATSDOGS = ROOT.parent / "shared" / "datasets" / "cats_and_dogs_small"
LAYERS = ("Input(shape=(160, 160, 3)) Conv2D(16, 3, strides=2, activation='relu') MaxPooling2D(2) "
          "Conv2D(32, 3, activation='relu') MaxPooling2D(2) Conv2D(64, 3, activation='relu') "
          "GlobalAveragePooling2D() Dense(2, activation='softmax')")
STEPS, BATCH = 300, 64


def make_one(job: tuple[int, str, str, int]) -> None:
    from PIL import Image, ImageOps

    index, source, target, seed = job
    rng = random.Random(seed)
    with Image.open(source) as photo:
        photo = photo.convert("RGB")
        width, height = photo.size
        scale = rng.uniform(0.7, 1.0)
        w, h = int(width * scale), int(height * scale)
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        image = photo.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        side = rng.randint(160, 220)
        image.resize((side, side)).save(target, quality=85)


def build(root: Path, count: int, seed: int = 0) -> float:
    """The folder: `count` training photos and 500 each for validation and test; seconds taken."""
    photos = {name: sorted((CATSDOGS / "train" / name).iterdir()) for name in ("cats", "dogs")}
    jobs = []
    for split, n in (("train", count), ("validation", 500), ("test", 500)):
        for name in ("cats", "dogs"):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n // 2):
                jobs.append((len(jobs), str(photos[name][(i * 7 + len(jobs)) % len(photos[name])]),
                             str(folder / f"{name}.{i}.jpg"), seed * 10_000_000 + len(jobs)))
    started = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        for _ in pool.imap_unordered(make_one, jobs, chunksize=256):
            pass
    return time.perf_counter() - started


def subset(root: Path, target: Path, count: int) -> None:
    """The first `count` training photos (and the same validation and test), linked into another folder."""
    for split in ("train", "validation", "test"):
        for name in ("cats", "dogs"):
            (target / split / name).mkdir(parents=True)
            files = sorted((root / split / name).iterdir(), key=lambda p: int(p.name.split(".")[1]))
            for file in files[:count // 2] if split == "train" else files:
                os.symlink(file, target / split / name / file.name)


def smallvision(*args: str, cache: Path, measure_memory: bool = False) -> tuple[float, str]:
    environment = {**os.environ, "SMALLVISION_PROGRESS": "0", "SMALLVISION_CACHE": str(cache)}
    command = [sys.executable, "-m", "smallvision.cli", *args]
    if measure_memory:
        command = ["/usr/bin/time", "-v", *command]
    started = time.perf_counter()
    done = subprocess.run(command, env=environment, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stderr


def train(folder: Path, out: Path, cache: Path, *extra: str, measure_memory: bool = False) -> dict:
    seconds, stderr = smallvision("train", str(folder), "--layers", LAYERS, "--recipe", "catsdogs", "--epochs", "1",
                                  "--steps-per-epoch", str(STEPS), "--batch-size", str(BATCH), "--set",
                                  "validation_freq=1", "--out", str(out), "--force", "--quiet", *extra, cache=cache,
                                  measure_memory=measure_memory)
    metrics = json.loads((out / "metrics.json").read_text())
    result = {"command_seconds": seconds, "images_per_second": metrics["images_per_second"],
              "streamed": metrics.get("streamed_from_cache", False), "test_accuracy": metrics.get("test_accuracy")}
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if found:
        result["peak_resident_gb"] = int(found.group(1)) * 1024 / 1e9
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--in-memory-images", type=int, default=20_000)
    parser.add_argument("--keep", help="build the folder here (and keep it, with its cache) instead of a temporary one")
    args = parser.parse_args()
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="big-folder-"))
    root, cache = scratch / "photos", scratch / "cache"
    summary = {"images": args.images}
    try:
        if not (root / "test").is_dir():
            seconds = build(root, args.images)
            print(f"built {args.images:,} training photos (+1,000) in {seconds:.0f} s", flush=True)
        small = scratch / "photos-20k"
        if not small.is_dir():
            subset(root, small, args.in_memory_images)
        shutil.rmtree(cache, ignore_errors=True)
        seconds, _ = smallvision("data", "check", str(root), "--image-size", "160", cache=cache)
        rate = (args.images + 1000) / seconds
        summary["first_decode"] = {"seconds": seconds, "images_per_second": rate}
        print(f"first decode (data check, {os.cpu_count()} cores): {args.images + 1000:,} photos in {seconds:.0f} s: "
              f"{rate:,.0f} images/s", flush=True)
        smallvision("data", "check", str(small), "--image-size", "160", cache=cache)  # its own cache entry, warm
        held = train(small, scratch / "run-memory", cache)
        streamed = train(root, scratch / "run-streamed", cache, "--memory-budget", "1GB", measure_memory=True)
        held_again = train(small, scratch / "run-memory-2", cache)
        reference = (held["images_per_second"] + held_again["images_per_second"]) / 2
        ratio = streamed["images_per_second"] / reference
        summary.update(in_memory=[held, held_again], streamed=streamed, ratio=ratio)
        print(f"training, {STEPS} steps of {BATCH}: from the memory-mapped cache ({args.images:,} photos, "
              f"--memory-budget 1GB, streamed={streamed['streamed']}) {streamed['images_per_second']:,.0f} images/s; "
              f"in memory ({args.in_memory_images:,} photos) {held['images_per_second']:,.0f} and "
              f"{held_again['images_per_second']:,.0f} (before and after): ratio {ratio:.2f}x (bar 0.9x)", flush=True)
        print(f"peak resident memory of the streamed run: {streamed.get('peak_resident_gb', float('nan')):.2f} GB "
              f"(bar 3 GB)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    save_results("big_folder", summary)


if __name__ == "__main__":
    main()
