"""The default for a folder of photos, chosen to fit the machine: what each pretrained recipe would cost
here, and the one with the best expected result that fits a time budget (`train --budget 3m`).

The cost of a recipe is counted in images through the network: the frozen backbone's forward pass
(features, validation, test, and every augmented batch of a frozen stage) and a fine-tuning step
(forward, backward through the last blocks, the update). Both rates are measured here once, in a few
seconds with a network of random weights (the same arithmetic as the pretrained one), and kept per
machine in the cache directory (`throughput.json`), keyed by what decides them: the CPU or GPU, the
threads, PyTorch's version, the backbone, its input size, the number format and the memory layout.
A from-scratch recipe is costed the same way (the studio shows it beside the others): its whole training
step and its forward pass, at its own image size.

    choice = choose(counts, overrides, rates, budget_seconds=180)
    choice.recipe, choice.line   # "catsdogs-finetune would take about 11 min here; ... using catsdogs-features"

No PyTorch at import: parsing a budget and choosing among made-up rates is plain arithmetic (the tests
do that); only `measure_rates` runs a network.
"""

import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from smallvision.errors import SmallvisionError
from smallvision.files import write_atomically
from smallvision.recipe import Recipe, load_recipe

# Best expected result first. On the shared cats-vs-dogs photos the three score within noise of each
# other (test 0.980-0.984); fine-tuning adapts the backbone itself, which matters most where photos are
# unlike ImageNet's, and augmentation without it still sees each photo differently every epoch.
CANDIDATES = ("catsdogs-finetune", "catsdogs-features-augment", "catsdogs-features")
WHAT = {"catsdogs-finetune": "fine-tuning", "catsdogs-features-augment": "features with augmentation",
        "catsdogs-features": "frozen features with a head"}
DEFAULT_BUDGET = "3m"  # a first result on a laptop in the time of a coffee; `--budget none`: always fine-tune
HEAD_SECONDS = 3.0  # training a Dense head on features already computed: seconds, whatever the machine
PROBE_BATCH = 16  # images per timed batch of a backbone: enough for the per-image cost to show, a few seconds
# A small network from scratch is timed at its own batch (at most this): at 16 a step's fixed costs would
# halve seed-mnist's rate (measured: an estimate of 69 s for 35 s of training)
SCRATCH_PROBE_BATCH = 64
PROBE_SECONDS = 0.25  # a pass of seed-mnist's network takes 8 ms: its best of 3 was still 20% slow
RATES_FORMAT = "smallvision-throughput/2"  # /2: a network from scratch timed at its own batch (/1 at 16)
STALE_BELOW = 0.5  # a cached forward rate more than 2x off the one measured now is measured again
UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_budget(text: str | float | None) -> float | None:
    """'5m', '90s', '1h', '1.5h', '300' (seconds) -> seconds; 'none' or None -> None (no limit)."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "none"):
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*", str(text).lower())
        if not match:
            raise SmallvisionError(f"--budget {text!r}: expected a time such as 5m, 90s or 1h (or none for no limit)")
        seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise SmallvisionError(f"--budget {text!r}: must be more than no time at all (e.g. 5m), or none")
    return seconds


def say_time(seconds: float) -> str:
    """About how long, as a person would say it: '40 s', '3 min', '1.2 h'."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Rates:
    """Images per second on this machine: through the frozen backbone (no gradient), through an
    augmented frozen training step (augmentation included), and through a fine-tuning step. For a network
    trained from scratch: its forward pass, and its whole training step as both of the others."""
    forward: float
    frozen_step: float
    tuning_step: float


@dataclass(frozen=True)
class Counts:
    """Images per split, as the run will have them (held-out splits carved already)."""
    train: int
    validation: int
    test: int


def estimate_seconds(recipe: Recipe, counts: Counts, rates: Rates) -> float:
    """Seconds of training and scoring: every image the recipe sends through the network, at its rate."""
    flips = 2 if recipe.run.test_time_flip else 1
    schedule = recipe.schedule

    def per_epoch(batch: int) -> int:
        return recipe.schedule.steps_per_epoch * batch if recipe.schedule.steps_per_epoch else counts.train

    def validations(epochs: int) -> int:
        return len({e for e in range(1, epochs + 1) if e % schedule.validation_freq == 0 or e == epochs}) \
            if counts.validation else 0

    batch = recipe.optimizer.batch_size
    if not recipe.network.backbone:  # from scratch: every batch through a whole training step (its `Rates`
        # measured with the whole network training: frozen_step and tuning_step are the same step)
        seconds = schedule.epochs * per_epoch(batch) / rates.tuning_step
        seconds += validations(schedule.epochs) * counts.validation * flips / rates.forward
        return seconds + counts.test * flips / rates.forward
    if recipe.augment.active:  # stage one: the frozen backbone on every augmented batch
        seconds = schedule.epochs * per_epoch(batch) / rates.frozen_step
        seconds += validations(schedule.epochs) * counts.validation * flips / rates.forward
    else:  # stage one: every split's features once, then the head alone
        seconds = (counts.train + counts.validation + counts.test) / rates.forward + HEAD_SECONDS
    if recipe.fine_tune.blocks:
        epochs = recipe.fine_tune.epochs
        seconds += epochs * per_epoch(batch) / rates.tuning_step
        seconds += validations(epochs) * counts.validation * flips / rates.forward
    if recipe.augment.active or recipe.fine_tune.blocks:  # the test split scored by the whole network
        seconds += counts.test * flips / rates.forward
    return seconds


@dataclass(frozen=True)
class Choice:
    recipe: str
    estimates: dict  # candidate -> seconds, best expected result first
    budget: float | None
    line: str  # what training's first line says

    def to_json(self) -> dict:
        return {"recipe": self.recipe, "budget_seconds": self.budget,
                "estimated_seconds": {name: round(s, 1) for name, s in self.estimates.items()}, "said": self.line}


def candidate_recipes(overrides: dict) -> dict[str, Recipe]:
    """The candidates with the user's overrides (`--epochs 3`, `--set fine_tune.epochs=2`) applied; one an
    override does not fit (a fine-tuning field on a recipe without fine-tuning) is left out."""
    recipes = {}
    for name in CANDIDATES:
        try:
            recipes[name] = load_recipe(name).replace(**overrides)
        except SmallvisionError:
            continue
    return recipes


def choose(counts: Counts, rates: Rates, budget_seconds: float | None, overrides: dict | None = None,
           given: bool = True) -> Choice:
    """The first candidate (best expected result) whose estimate fits the budget; with no budget, the
    first. None fits a budget the user `given`: one line saying what the cheapest would take. None fits the
    default budget: the cheapest, said so (a plain `train FOLDER` always trains)."""
    recipes = candidate_recipes(overrides or {})
    if not recipes:
        raise SmallvisionError("no pretrained recipe takes these overrides; name a recipe with --recipe")
    estimates = {name: estimate_seconds(recipe, counts, rates) for name, recipe in recipes.items()}
    best = next(iter(recipes))
    if budget_seconds is None:
        return Choice(best, estimates, None, f"{best} ({WHAT[best]}): about {say_time(estimates[best])} here, "
                                             f"training and scoring (--budget none: no limit)")
    fitting = [name for name in recipes if estimates[name] <= budget_seconds]
    if not fitting and not given:
        cheapest = min(estimates, key=estimates.get)
        return Choice(cheapest, estimates, budget_seconds,
                      f"{cheapest} ({WHAT[cheapest]}) would take about {say_time(estimates[cheapest])} here, the "
                      f"quickest of the recipes, over the default budget of {say_time(budget_seconds)}: using it "
                      f"(--budget none for {WHAT[best]})")
    if not fitting:
        cheapest = min(estimates, key=estimates.get)
        raise SmallvisionError(f"--budget {say_time(budget_seconds)}: too little for any recipe here; the cheapest, "
                               f"{cheapest} ({WHAT[cheapest]}), would take about {say_time(estimates[cheapest])}: "
                               f"give --budget {say_time(estimates[cheapest] * 1.3).replace(' ', '')} or more")
    chosen = fitting[0]
    if chosen == best:
        line = (f"{chosen} ({WHAT[chosen]}) would take about {say_time(estimates[chosen])} here, within "
                f"--budget {say_time(budget_seconds)}: using it")
    else:
        names = list(recipes)
        over = [f"{name} ({WHAT[name]}) would take about {say_time(estimates[name])} here"
                for name in names[:names.index(chosen)]]
        line = (f"{'; '.join(over)}; {chosen} ({WHAT[chosen]}) about {say_time(estimates[chosen])}: using it, "
                f"within --budget {say_time(budget_seconds)} (--recipe {best} for {WHAT[best]} anyway, or a larger --budget)")
    return Choice(chosen, estimates, budget_seconds, line)


def counts_of(split_files: dict[str, int], test_fraction: float, val_fraction: float) -> Counts:
    """What each split will hold: a folder's own splits, and the fractions carved from train where it has none."""
    train = split_files.get("train", 0)
    test = split_files.get("test", 0)
    validation = split_files.get("validation", 0)
    if not test and test_fraction:
        test = round(train * test_fraction)
        train -= test
    if not validation and val_fraction:
        validation = round(train * val_fraction)
        train -= validation
    return Counts(train, validation, test)


def machine_key(recipe: Recipe, device, precision: str, threads: int) -> str:
    import torch

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = cpu_name()
    isa = f"{os.environ.get('ONEDNN_MAX_CPU_ISA', '')}/{os.environ.get('ATEN_CPU_CAPABILITY', '')}"
    network = recipe.network.backbone or recipe.network.model  # (a backbone recipe's key as it always was)
    if recipe.network.layers:
        network = "layers:" + ";".join(map(str, recipe.network.layers))
    return "|".join(map(str, (hardware, isa, threads, torch.__version__, network, recipe.data.image_size,
                              recipe.fine_tune.blocks, recipe.optimizer.batch_size, precision,
                              recipe.preprocess.channels_last, device.type)))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rates_here(recipe: Recipe, device, precision: str, cache_dir=None) -> Rates:
    """This machine's rates for the recipe's backbone: from the cache, else measured now and cached."""
    import torch

    from smallvision.data.cache import user_cache_dir

    key = machine_key(recipe, device, precision, torch.get_num_threads())
    path = user_cache_dir(cache_dir) / "throughput.json"
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict) or known.get("format") != RATES_FORMAT:
            known = {}  # another format, or damaged: measured again and rewritten
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), dict):
        try:
            cached = Rates(**known[key])
        except TypeError:
            cached = None  # written by another shape of Rates: measure again
        # A rate measured while the machine was busy with something else stays wrong for every later
        # run (seen: 10.8 images/s cached for a forward pass that runs at 211, which made the default
        # refuse to train). One forward pass, well under a second, tells a stale entry from a good one.
        if cached is not None and STALE_BELOW <= forward_rate_now(recipe, device, precision) / cached.forward \
                <= 1 / STALE_BELOW:
            return cached
    rates = measure_rates(recipe, device, precision)
    known = {**{k: v for k, v in known.items() if isinstance(v, dict)}, "format": RATES_FORMAT, key: asdict(rates)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda p: p.write_text(json.dumps(known, indent=1)))
    except OSError:
        pass  # a cache that cannot be written only costs the next run these seconds again
    return rates


class Probe:
    """A random-weight copy of the recipe's network (the same arithmetic as the pretrained weights) and a
    batch of random images on the device, timed pass by pass."""

    def __init__(self, recipe: Recipe, device, precision: str, batch: int = PROBE_BATCH):
        import torch

        from smallvision.models import recipe_image_shape, recipe_model

        shape = recipe_image_shape(recipe)
        if shape is None:
            raise SmallvisionError(f"recipe {recipe.name!r} takes its images' own size (digits from IDX files): "
                                   f"no speed to measure for photos without an image_size")
        self.recipe, self.device, self.precision, self.batch = recipe, device, precision, batch
        self.model = recipe_model(recipe, shape, 2, pretrained=False).to(device)
        if recipe.preprocess.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.images = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=device,
                                    generator=self.generator)
        if recipe.network.backbone:
            self.model.freeze_backbone()
        self.model.eval()

    def timed(self, work, repeats: int) -> float:
        """Images per second of the fastest of `repeats` timed passes (more, for a small network, until
        PROBE_SECONDS have passed), after one untimed one (oneDNN builds its kernels then): on a machine doing
        something else too, the least disturbed pass is the closest to what a long training averages
        (measured: the mean of two moved by 25%)."""
        import torch

        work()
        best, began, done = float("inf"), time.perf_counter(), 0
        while done < repeats or time.perf_counter() - began < PROBE_SECONDS:
            done += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            work()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            best = min(best, time.perf_counter() - started)
        return self.batch / best

    def forward(self) -> None:
        import torch

        from smallvision.inference import autocast

        with torch.no_grad(), autocast(self.device, self.precision):
            self.model(self.recipe.preprocess(self.images))

    def frozen_step(self) -> None:
        from smallvision.augment import augment_batch
        from smallvision.inference import autocast

        augment = self.recipe.augment
        augmented = augment_batch(augment, self.images, self.generator) if augment.active else self.images
        with autocast(self.device, self.precision):
            outputs = self.model(self.recipe.preprocess(augmented)).float()
        # any loss of every output costs the same backward pass: this one fits a softmax's two columns and a
        # sigmoid's one (the seed's networks for two classes) alike
        outputs.logsumexp(dim=1).mean().backward()  # a frozen backbone: the head's gradient alone


def probe_batch(recipe: Recipe) -> int:
    """Images per timed pass for this recipe's network (the check and the measurement alike)."""
    return PROBE_BATCH if recipe.network.backbone else min(recipe.optimizer.batch_size, SCRATCH_PROBE_BATCH)


def forward_rate_now(recipe: Recipe, device, precision: str) -> float:
    """The frozen backbone's images per second now, the faster of two timed passes: the check on a cached
    rate (a check, not a measurement to keep)."""
    probe = Probe(recipe, device, precision, probe_batch(recipe))
    return probe.timed(probe.forward, repeats=2)


def measure_rates(recipe: Recipe, device, precision: str, batch: int | None = None, repeats: int = 3) -> Rates:
    """Time the three passes of `Rates` with a `Probe` (of `probe_batch` images unless told)."""
    from smallvision.optim import build_optimizer

    probe = Probe(recipe, device, precision, batch or probe_batch(recipe))
    forward_rate = probe.timed(probe.forward, repeats)
    scratch = not recipe.network.backbone
    frozen_rate = tuning_rate = 0.0 if scratch else probe.timed(probe.frozen_step, repeats)
    if scratch or recipe.fine_tune.blocks:  # a whole network's step from scratch, the last blocks' else
        model = probe.model
        if not scratch:
            model.unfreeze_last_blocks(recipe.fine_tune.blocks)
        model.train()
        optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], recipe)

        def tuning_step():
            optimizer.zero_grad(set_to_none=True)
            probe.frozen_step()
            optimizer.step()

        tuning_rate = probe.timed(tuning_step, repeats)
    return Rates(forward_rate, tuning_rate if scratch else frozen_rate, tuning_rate)
