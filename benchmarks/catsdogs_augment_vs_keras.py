"""Benchmark: the seed's augmented cats-vs-dogs program in Keras against smallvision's seed-catsdogs-augment.

Same network, batch (32), image size (150x150) and augmentation; one pass of the 2,000 training
images per epoch for both (Keras 3 ends the seed's 100-step epochs after one pass anyway), and
1,000 validation images after each. Runs them alternately in one invocation and prints seconds
per epoch (validation included) and training images per second, side by side, with the ratio.
Then it times the parts of each, to say where the time goes: Keras' ImageDataGenerator alone
and its network alone; smallvision's decoding (first run and cached), augmentation alone and
network step alone.

    python benchmarks/catsdogs_augment_vs_keras.py [--rounds 2] [--epochs 3] [--data DIR]

The Keras environment comes from benchmarks/keras-env (created on first use).
"""

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from keras_baseline import ROOT, keras_python, save_results

ANCHOR = ROOT.parent / "shared" / "anchors" / "keras_catsdogs.py"
KERAS_PARTS = ROOT / "benchmarks" / "keras_catsdogs_parts.py"
BATCH, SHAPE = 32, (3, 150, 150)


def keras_environment() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_keras(python: str, data: Path, epochs: int) -> dict:
    done = subprocess.run([python, str(ANCHOR), str(data), str(epochs), "100", "augment"], capture_output=True,
                          text=True, check=True, env=keras_environment())
    found = re.search(r"s_per_epoch=([\d.]+) train_images=(\d+) train_img_per_s=([\d.]+) val_acc=([\d.]+)", done.stdout)
    return {"s_per_epoch": float(found[1]), "train_images": int(found[2]), "train_img_per_s": float(found[3]),
            "val_accuracy": float(found[4])}


def run_smallvision(data: Path, epochs: int, scratch: Path, cache: Path) -> dict:
    out = scratch / f"sv-{time.monotonic_ns()}"
    subprocess.run([sys.executable, "-m", "smallvision.cli", "train", str(data), "--recipe", "seed-catsdogs-augment",
                    "--epochs", str(epochs), "--steps-per-epoch", "0", "--out", str(out), "--cache-dir", str(cache),
                    "--quiet"], check=True, capture_output=True, text=True)
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    epoch_seconds = [float(r["seconds"]) + float(r["val_seconds"]) for r in rows]
    return {"s_per_epoch": statistics.mean(epoch_seconds), "train_images": round(metrics["images_per_second"]
            * metrics["train_seconds"]), "train_img_per_s": metrics["images_per_second"],
            "val_accuracy": metrics["val_accuracy"], "load_seconds": metrics["load_seconds"]}


def smallvision_parts(data: Path, scratch: Path) -> dict:
    """Decoding (a first run, then from the cache), augmentation alone, and the network step alone."""
    from smallvision.augment import augment_batch
    from smallvision.data.folders import load_image_folder
    from smallvision.models import create_model
    from smallvision.optim import build_optimizer, flatten_parameters, zero_gradients
    from smallvision.recipe import load_recipe
    from smallvision.inference import autocast
    from smallvision.step import cross_entropy

    cache = scratch / "parts-cache"
    start = time.perf_counter()
    source = load_image_folder(data, SHAPE, cache, progress=False)
    first_load = time.perf_counter() - start
    start = time.perf_counter()
    source = load_image_folder(data, SHAPE, cache, progress=False)
    for split in source.splits().values():  # touch every page, so a lazily mapped file is really read
        int(split.images.reshape(-1)[::4096].sum())
    cached_load = time.perf_counter() - start

    recipe = load_recipe("seed-catsdogs-augment")
    images, labels = source.train.images, source.train.labels
    batches = [torch.arange(i, min(i + BATCH, len(images))) for i in range(0, len(images), BATCH)]
    augment, generator = recipe.augment, torch.Generator().manual_seed(0)
    start = time.perf_counter()
    augmented = [augment_batch(augment, images[b], generator) for b in batches]
    augment_rate = len(images) / (time.perf_counter() - start)

    torch.manual_seed(0)
    model = create_model(recipe.network.model, SHAPE, 2, recipe.network.dropout).to(memory_format=torch.channels_last)
    weights = flatten_parameters(model)
    optimizer = build_optimizer(weights, recipe)
    preprocess = recipe.preprocess
    for step, index in enumerate([0, 1, 2] + list(range(len(batches)))):  # three warm-up steps, then one pass
        if step == 3:
            start = time.perf_counter()
        with autocast(torch.device("cpu"), recipe.run.precision):
            logits = model(preprocess(augmented[index]))
        loss = cross_entropy(logits, labels[batches[index]], True, 0.0)
        zero_gradients(weights)
        loss.backward()
        optimizer.step()
    network_rate = len(images) / (time.perf_counter() - start)
    return {"decode_first_s": first_load, "decode_cached_s": cached_load, "augment_img_per_s": augment_rate,
            "network_img_per_s": network_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cats_and_dogs_small")
    args = parser.parse_args()
    python = keras_python()
    results = {"keras": [], "smallvision": []}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        for round_index in range(args.rounds):
            for name in results:
                if name == "keras":
                    result = run_keras(python, args.data, args.epochs)
                else:
                    result = run_smallvision(args.data, args.epochs, scratch, scratch / "cache")
                results[name].append(result)
                print(f"round {round_index + 1}  {name:<12} {result['s_per_epoch']:6.1f} s/epoch  "
                      f"{result['train_img_per_s']:6.1f} train img/s  val accuracy {result['val_accuracy']:.3f}",
                      flush=True)
        keras_parts = subprocess.run([python, str(KERAS_PARTS), str(args.data)], capture_output=True, text=True,
                                     check=True, env=keras_environment()).stdout
        found = re.search(r"generator_img_per_s=([\d.]+) network_img_per_s=([\d.]+)", keras_parts)
        parts = {"keras": {"generator_img_per_s": float(found[1]), "network_img_per_s": float(found[2])},
                 "smallvision": smallvision_parts(args.data, scratch)}

    means = {name: {key: statistics.mean(r[key] for r in rows) for key in ("s_per_epoch", "train_img_per_s")}
             for name, rows in results.items()}
    keras, ours = means["keras"], means["smallvision"]
    print(f"\n{'':<28}{'Keras':>10}{'smallvision':>13}{'ratio':>9}")
    print(f"{'seconds per epoch':<28}{keras['s_per_epoch']:>10.1f}{ours['s_per_epoch']:>13.1f}"
          f"{keras['s_per_epoch'] / ours['s_per_epoch']:>8.2f}x  (Keras / smallvision: how much faster)")
    print(f"{'training images per second':<28}{keras['train_img_per_s']:>10.1f}{ours['train_img_per_s']:>13.1f}"
          f"{ours['train_img_per_s'] / keras['train_img_per_s']:>8.2f}x  (smallvision / Keras)")
    k, s = parts["keras"], parts["smallvision"]
    print("\nwhere the time goes (images per second of each part alone; higher is cheaper):")
    print(f"  Keras        ImageDataGenerator (read, decode, resize, augment) {k['generator_img_per_s']:7.1f}"
          f"   network step {k['network_img_per_s']:7.1f}")
    print(f"  smallvision  augmentation {s['augment_img_per_s']:7.1f}   network step {s['network_img_per_s']:7.1f}"
          f"   decoding once: {s['decode_first_s']:.2f} s the first time, {s['decode_cached_s']:.2f} s from the cache"
          f" ({s['decode_first_s'] / s['decode_cached_s']:.0f}x)")
    summary = {"means": means, "ratio_img_per_s": ours["train_img_per_s"] / keras["train_img_per_s"],
               "parts": parts, "runs": results, "threads": torch.get_num_threads()}
    save_results("catsdogs_augment_vs_keras", summary)


if __name__ == "__main__":
    main()
