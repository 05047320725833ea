"""Benchmark: issue 26's figures, "none of these" and calibration, each beside its baseline from the same run.

    python benchmarks/unknown_figures.py rejection [--photos RUN] [--digits RUN]
        # a catsdogs-finetune run (trained here unless given) against photos of no class: MNIST digits as RGB
        # photos, the synthetic shapes (smallvision.data.shapes: a square or a disk on noise) and procedural
        # textures (stripes and checks of random colours and scales); a seed-mnist run against photos of no
        # digit: the shared cats-vs-dogs test photos, the shapes and the textures, in grey. For each set: the
        # AUROC of unknown_score and of the usual first try, 1 - the softmax's top probability (MSP), and at the
        # default line (95% of the held-out images accepted) the share of known test images called unknown
        # and of the set's images caught, for both scores.
    python benchmarks/unknown_figures.py calibration [--recipes a,b] [--epochs-cap N]
        # every built-in recipe trained here; its test ECE and NLL before (T = 1) and after (the run's own
        # temperature), the ECE a perfectly calibrated model would show on the same images (its floor); the
        # seconds the fit after training took against the whole command's
    python benchmarks/unknown_figures.py cost --run RUN
        # predict's time per image with the scorer against without it (alternating rounds, medians): on files,
        # as the command answers, and the network alone on tensors

Runs and folders go under --work (default: a temporary directory).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("SMALLVISION_DATA", ROOT.parent / "shared" / "datasets"))
CATSDOGS = SHARED / "cats_and_dogs_small"
COUNT = 1000  # images in each set of no class


def train(source, recipe: str, out: Path, cache: Path, *extra: str) -> tuple[Path, float]:
    """A run trained by the CLI, and the whole command's seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "smallvision", "train", str(source), "--recipe", recipe, "--out", str(out),
                    "--cache-dir", str(cache), "--quiet", "--force", *extra], check=True,
                   env={**os.environ, "SMALLVISION_PROGRESS": "0"})
    return out, time.perf_counter() - started


def resized(images: np.ndarray, channels: int, side: int) -> np.ndarray:
    """uint8 [N, H, W, C or nothing] -> uint8 [N, channels, side, side], as a photo is read (area/bilinear)."""
    from PIL import Image

    out = []
    for image in images:
        picture = Image.fromarray(image)
        picture = picture.convert("RGB" if channels == 3 else "L")
        smaller = side < max(picture.size)
        picture = picture.resize((side, side), Image.Resampling.BOX if smaller else Image.Resampling.BILINEAR)
        array = np.asarray(picture)
        out.append(array.transpose(2, 0, 1) if channels == 3 else array[None])
    return np.stack(out)


def textures(count: int, seed: int = 1, side: int = 96) -> np.ndarray:
    """Stripes and checks of random orientation, scale and two random colours: uint8 [N, side, side, 3]."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:side, 0:side].astype(np.float32)
    images = []
    for index in range(count):
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
        u = (rows * np.cos(angle) + columns * np.sin(angle)) / period
        if index % 2:
            v = (-rows * np.sin(angle) + columns * np.cos(angle)) / period
            mask = (np.floor(u) + np.floor(v)) % 2
        else:
            mask = (np.sin(2 * np.pi * u) > 0).astype(np.float32)
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        images.append((mask[..., None] * a + (1 - mask[..., None]) * b).astype(np.uint8))
    return np.stack(images)


def sets_of_no_class(shape) -> dict[str, np.ndarray]:
    """The sets of no class at the run's input shape (C, H, W), COUNT images each."""
    from smallvision.data.idx import read_idx
    from smallvision.data.shapes import make_shapes

    channels, side = shape[0], shape[1]
    found = {}
    if channels == 3:
        digits = read_idx(next((SHARED / "mnist").glob("t10k-images*")))[:COUNT]
        found["MNIST digits as RGB photos"] = resized(digits, 3, side)
    else:
        from PIL import Image

        photos = sorted((CATSDOGS / "test").rglob("*.jpg"))[:COUNT]
        found["cats-vs-dogs test photos in grey"] = resized(
            np.stack([np.asarray(Image.open(p).convert("RGB").resize((96, 96))) for p in photos]), 1, side)
    found["shapes (square or disk on noise)"] = resized(make_shapes(COUNT, seed=7)[0], channels, side)
    found["textures (stripes and checks)"] = resized(textures(COUNT), channels, side)
    return found


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(an unknown image scores above a known one), ties half: the area under the ROC curve."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([known, unknown]))
    n, m = len(known), len(unknown)
    return float((ranks[n:].sum() - m * (m + 1) / 2) / (n * m))


def held_out_images(run):
    """The images the run's threshold was placed on: its validation split, or training images left out."""
    import torch

    from smallvision.unknown import HELD_IMAGES, REFERENCE_IMAGES, reference_order

    source = run.labelled_split(split="validation") if run.unknown.held_out == "validation" else None
    if source is not None:
        return source.images
    train = run.labelled_split(split="train")
    count = min(HELD_IMAGES, max(len(train) - REFERENCE_IMAGES, len(train) // 5))
    order = reference_order(len(train), run.recipe.run.seed)
    return train.subset(order[len(train) - count:]).images if count else torch.empty(0)


def rejection_of(run) -> None:
    import torch

    from smallvision.inference import scores_with_unknown

    def scored(images):
        probabilities, scores = scores_with_unknown(run.model, torch.as_tensor(images), run.preprocess, run.precision,
                                                    run.device, run.test_time_flip, run.unknown)
        return scores.numpy(), 1 - probabilities.max(1).values.numpy()

    test = run.labelled_split(split="test")
    known, known_msp = scored(test.images)
    _, held_msp = scored(held_out_images(run))
    msp_line = float(np.quantile(held_msp, 1 - run.unknown.rate))  # the same rule: 95% of held-out accepted
    line = run.unknown.threshold
    print(f"\n{run.path.name} ({run.recipe.name}, test accuracy {run.metrics.get('test_accuracy', 0):.4f}): "
          f"{len(known):,} known test images; lines at {run.unknown.rate:.0%} of {run.unknown.held_out}")
    print(f"  known test called unknown: ours {np.mean(known > line):.1%}, MSP {np.mean(known_msp > msp_line):.1%} "
          f"(bar: at most 6%)")
    print(f"  {'set of no class':<36} {'AUROC ours':>10} {'MSP':>7} {'ratio':>6} {'caught ours':>12} {'MSP':>6}")
    for name, images in sets_of_no_class(run.meta.architecture.input_shape).items():
        ours, msp = scored(images)
        ours_auc, msp_auc = auroc(known, ours), auroc(known_msp, msp)
        print(f"  {name:<36} {ours_auc:>10.4f} {msp_auc:>7.4f} {ours_auc / msp_auc:>6.2f} "
              f"{np.mean(ours > line):>12.1%} {np.mean(msp > msp_line):>6.1%}")
    print("  bars: AUROC at least 0.95, caught at least 90% for each set")


def rejection(work: Path, photos: str | None, digits: str | None) -> None:
    from smallvision.run import load_run

    cache = work / "cache"
    if photos is None:
        photos, seconds = train(CATSDOGS, "catsdogs-finetune", work / "run-photos", cache)
        print(f"trained catsdogs-finetune in {seconds:.0f} s")
    if digits is None:
        digits, seconds = train("mnist", "seed-mnist", work / "run-digits", cache)
        print(f"trained seed-mnist in {seconds:.0f} s")
    for path in (photos, digits):
        rejection_of(load_run(path))


def calibration(work: Path, recipes: list[str], epochs_cap: int | None, reuse: dict[str, str]) -> None:
    from smallvision.calibration import output_layers, set_temperature
    from smallvision.metrics import expected_calibration_error, log_loss
    from smallvision.run import load_run

    rows = []
    for recipe in recipes:
        source = "mnist" if "mnist" in recipe else CATSDOGS
        extra = []
        if epochs_cap:
            from smallvision.recipe import load_recipe

            if load_recipe(recipe).schedule.epochs > epochs_cap:
                extra = ["--epochs", str(epochs_cap)]
        if recipe in reuse:  # a run this benchmark (or another) trained already: its command's time is not known
            out, seconds, extra = Path(reuse[recipe]), float("nan"), []
        else:
            out, seconds = train(source, recipe, work / f"run-{recipe}", work / "cache", *extra)
        run = load_run(out)
        test = run.labelled_split(split="test")
        labels = test.labels.cpu()
        after = run.split_probabilities(test)
        temperature = output_layers(run.model).temperature
        set_temperature(run.model, None)
        before = run.split_probabilities(test)
        metrics = run.metrics
        row = (recipe + (f" ({extra[1]} epochs)" if extra else ""), float((after.argmax(1) == labels).float().mean()),
               temperature, expected_calibration_error(before, labels), expected_calibration_error(after, labels),
               ece_floor(after), log_loss(labels, before), log_loss(labels, after),
               metrics.get("after_training_seconds", 0.0), seconds)
        rows.append(row)
        print_rows(rows[-1:], header=len(rows) == 1)
    print("\nall recipes:")
    print_rows(rows, header=True)
    print("bars: ECE after at most 0.02 for each; NLL after never above before; the fit after training at most 5% of "
          "the command")


def ece_floor(probabilities, draws: int = 200, seed: int = 0) -> float:
    """The test ECE a perfectly calibrated model would show with these probabilities on this many images: the
    median over `draws` label sets drawn from the probabilities themselves. Fifteen bins of a thousand images
    hold sampling noise of their own; an ECE near this is as good as the test split can tell."""
    import torch

    from smallvision.metrics import expected_calibration_error

    generator = torch.Generator().manual_seed(seed)
    drawn = [expected_calibration_error(probabilities, torch.multinomial(probabilities, 1, generator=generator)[:, 0])
             for _ in range(draws)]
    return float(np.median(drawn))


def print_rows(rows, header: bool) -> None:
    if header:
        print(f"{'recipe':<34} {'test acc':>8} {'T':>6} {'ECE before':>10} {'after':>7} {'floor':>6} {'NLL before':>10} "
              f"{'after':>7} {'fit s':>6} {'command s':>9} {'share':>6}")
    for name, accuracy, temperature, ece0, ece1, floor, nll0, nll1, fit, command in rows:
        print(f"{name:<34} {accuracy:>8.4f} {temperature:>6.3f} {ece0:>10.4f} {ece1:>7.4f} {floor:>6.4f} {nll0:>10.4f} "
              f"{nll1:>7.4f} {fit:>6.1f} {command:>9.0f} {fit / command:>6.1%}", flush=True)


def cost(path: str, work: Path, rounds: int = 11) -> None:
    """predict's time per image with the scorer against without it, two ways: the `predict` path (files read,
    answered: Run.predict, as the command and serve do it) and the network alone on tensors (the strictest)."""
    import torch
    from PIL import Image

    from smallvision.run import load_run

    run = load_run(path)
    images = run.labelled_split(split="test").images[:512]
    files = []
    for index, image in enumerate(images):  # the test images as files, as a user would hand them over
        files.append(work / "cost-images" / f"{index:04d}.png")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(files[-1])
    scorer = run.unknown

    def with_scorer(on: bool, call):
        run.unknown = scorer if on else None
        return call()

    paths = {"predict on files": lambda: run.predict(files),
             "the network alone": lambda: run.probabilities_and_unknown(images)}
    for name, call in paths.items():
        plain, scored = [], []
        with_scorer(False, call), with_scorer(True, call)  # warm
        for round_ in range(rounds):
            pair = ((plain, False), (scored, True))
            for timings, on in pair if round_ % 2 else pair[::-1]:  # ABBA: neither goes first every time
                started = time.perf_counter()
                with torch.no_grad():
                    with_scorer(on, call)
                timings.append((time.perf_counter() - started) / len(images))
        a, b = statistics.median(plain), statistics.median(scored)
        print(f"{run.path.name}, {name}: {a * 1e3:.3f} ms an image without the scorer, {b * 1e3:.3f} ms with it: "
              f"{b / a:.3f}x (bar: at most 1.05x), {len(images)} test images, {rounds} alternating rounds, medians")
    run.unknown = scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=("rejection", "calibration", "cost"))
    parser.add_argument("--work")
    parser.add_argument("--photos", help="rejection: a catsdogs-finetune run to use instead of training one")
    parser.add_argument("--digits", help="rejection: a seed-mnist run to use instead of training one")
    parser.add_argument("--recipes", default="fast-mnist,seed-mnist,catsdogs-features,catsdogs-finetune,"
                                             "catsdogs-features-augment,seed-catsdogs,seed-catsdogs-augment,catsdogs")
    parser.add_argument("--epochs-cap", type=int, help="calibration: train no recipe longer than this many epochs")
    parser.add_argument("--reuse", action="append", default=[], metavar="RECIPE=RUN",
                        help="calibration: use this run of the recipe instead of training one")
    parser.add_argument("--run", help="cost: the run to time")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="unknown-figures-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work: {work}", flush=True)
    if args.figure == "rejection":
        rejection(work, args.photos, args.digits)
    elif args.figure == "calibration":
        calibration(work, args.recipes.split(","), args.epochs_cap, dict(item.split("=", 1) for item in args.reuse))
    else:
        cost(args.run, work)


if __name__ == "__main__":
    main()
