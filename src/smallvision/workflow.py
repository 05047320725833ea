"""`train`: source + recipe -> a run directory. The function the CLI's `train` calls."""

import contextlib
import csv
import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from smallvision import distributed
from smallvision.balance import class_weights
from smallvision.checkpoint import NAME as CHECKPOINT_NAME
from smallvision.checkpoint import Checkpointer, Resume, read_checkpoint, stop_on_signals
from smallvision.data.cache import data_path, parse_size, size
from smallvision.data.folders import scan_folder
from smallvision.data.imageset import DataSource
from smallvision.data.sources import (FINGERPRINT_KIND, NAMED_SOURCES, is_photo_folder, open_source, source_spec,
                                      split_fingerprints)
from smallvision.errors import SmallvisionError, TrainingStopped
from smallvision.images import has_dark_background
from smallvision.models import recipe_image_shape, recipe_model, with_backbone_preprocessing
from smallvision.models.layer_text import layer_source, layers_source, layers_to_json
from smallvision.models.layers import Input, Sequential
from smallvision.precision import inference_precision, training_precision
from smallvision.step import NonFiniteLoss
from smallvision.recipe import Recipe, builtin_recipes, flat_names, load_recipe
from smallvision.files import write_atomically
from smallvision.run import Run, prepare_run_dir, run_dir_name, save_run, training_lock
from smallvision.runmeta import Architecture, Preprocessing, RunMeta
from smallvision.inference import fit_after_training, resolve_device, split_scores
from smallvision.callbacks import Callback, LiveLog, shows
from smallvision.loop import Loop
from smallvision.transfer import fit_backbone_classifier
from smallvision.unknown import reference_size
from smallvision.budget import (DEFAULT_BUDGET, Choice, Counts, choose, counts_of, estimate_seconds, parse_budget,
                                rates_here)

# With no recipe named: the seed's training for digits; for photos a pretrained network (the seed's
# 28x28 greyscale network would waste them): fine-tuned where it fits the budget here (budget.py
# chooses; `--budget none` always), which is the recipe every caller that asks for "the default" gets.
DEFAULT_RECIPE = "seed-mnist"
DEFAULT_PHOTO_RECIPE = "catsdogs-finetune"
DEFAULT_LAYERS_PHOTO_RECIPE = "catsdogs"  # a network of the user's own on photos: our from-scratch training
# Held out of each class as test (then of the rest as validation) when a photo folder has no such
# split of its own: a run should end with a score on images it never saw.
HELD_OUT_FRACTION = 0.15
SPLIT_FIELDS = {"test_split": "test", "val_split": "validation"}  # in the order they are carved


def default_recipe(source: str | Path) -> str:
    return DEFAULT_PHOTO_RECIPE if is_photo_folder(source) else DEFAULT_RECIPE


def held_out_splits(source: str | Path, recipe_named: str | Path | Recipe, recipe: Recipe, overrides: dict) -> dict:
    """The split fractions to add when a built-in recipe meets a photo folder without validation/ or
    test/: HELD_OUT_FRACTION for each missing one the caller did not choose. A recipe file or object is
    taken as written."""
    if not is_photo_folder(source) or not isinstance(recipe_named, str) or recipe_named not in builtin_recipes():
        return {}
    present = {split for split, files in scan_folder(Path(source)).files.items() if files}
    return {field: HELD_OUT_FRACTION for field, split in SPLIT_FIELDS.items()
            if split not in present and field not in overrides and recipe.get(field) == 0}


def train(source: str | Path | None = None, recipe: str | Path | Recipe | None = None, out: str | Path | None = None,
          data: str | Path | None = None, force: bool = False, progress: bool | str = "auto",
          cache_dir: str | Path | None = None, resume: str | Path | None = None, callbacks: list[Callback] = (),
          budget: str | float | None = None, **overrides) -> Run:
    """Train on `source` as `recipe` says (fields overridden by keyword), write a run directory, return it.
    Without a recipe: `default_recipe(source)`, which for a folder of photos is the pretrained recipe with
    the best expected result that fits `budget` here (budget.py: '5m', seconds, or 'none'; default 3m).
    With `resume`, continue that unfinished run instead."""
    if budget is not None:
        refuse_budget(source, recipe, resume, overrides)
    budget_seconds = parse_budget(DEFAULT_BUDGET if budget is None else budget)
    if resume is not None:
        return resume_run(resume, data, progress, cache_dir, source, recipe, overrides, callbacks)
    overrides = flat_names(overrides)
    network = overrides.get("model")
    if isinstance(network, (Sequential, list)):  # sv.train(..., model=sv.Sequential([...])): its layers count
        layers = network.keras_layers if isinstance(network, Sequential) else network
        overrides.pop("model")
        overrides["layers"] = layers_source(layers)
        if isinstance(network, Sequential) and network.input_shape and not any(isinstance(x, Input) for x in layers):
            channels, height, width = network.input_shape
            overrides["layers"].insert(0, layer_source(Input(shape=(height, width, channels))))
    if overrides.get("layers") is not None:
        # A network of one's own: trained by our from-scratch photo recipe unless one is named, and
        # without the named network's Dropout rate (its own Dropout layers say that)
        recipe = recipe or (DEFAULT_LAYERS_PHOTO_RECIPE if is_photo_folder(source) else None)
        overrides.setdefault("dropout", 0.0)
    chooses = recipe is None and is_photo_folder(source)  # the pretrained default, chosen within the budget
    recipe_named = recipe or default_recipe(source)
    recipe = load_recipe(recipe_named).replace(**overrides)
    ranks, device = start_processes(recipe)
    progress = progress if ranks.main else "off"
    chosen = None
    if chooses:
        chosen = choose_default(source, recipe, overrides, device, budget_seconds, cache_dir,
                                given=budget is not None) if ranks.main else None
        recipe_named = distributed.from_main(chosen.recipe if chosen else None)
        recipe = load_recipe(recipe_named).replace(**overrides)
        if chosen and shows(progress):
            print(chosen.line, file=sys.stderr, flush=True)
    held_out = held_out_splits(source, recipe_named, recipe, overrides)
    if held_out:
        recipe = recipe.replace(**held_out)
        if shows(progress):
            missing = " and ".join(SPLIT_FIELDS[field] for field in held_out)
            print(f"{source} has no {missing} split of its own: holding out {HELD_OUT_FRACTION:.0%} of each class "
                  f"for {'each' if len(held_out) > 1 else 'it'} (--test-split and --val-split choose the fractions; "
                  f"0 keeps the images for training)", file=sys.stderr, flush=True)
    source_label = Path(str(source)).name or str(source)
    directory = Path(distributed.from_main(str(run_dir_name(out, f"{source_label}-{recipe.name}"))))
    created = not directory.exists()
    # Rank 0 alone writes the directory; a second training aimed at it is refused while this one runs.
    with training_lock(directory) if ranks.main else contextlib.nullcontext():
        try:
            if ranks.main:
                prepare_run_dir(directory, "", force)
                (directory / CHECKPOINT_NAME).unlink(missing_ok=True)  # --force over an unfinished run: afresh
                # What --resume needs, first: a run stopped at any moment after this line can be continued.
                started = {"source": source_spec(source), "data": str(Path(data).resolve()) if data else None}
                if chosen:
                    started["recipe_choice"] = chosen.to_json()  # why this recipe: the estimates and the budget
                write_atomically(directory / "training.json", lambda p: p.write_text(json.dumps(started, indent=2)))
                write_atomically(directory / "recipe.toml", lambda p: p.write_text(recipe.to_toml()))
            train_into(directory, source, recipe, device, data, progress, cache_dir, callbacks=callbacks,
                       recipe_choice=chosen.to_json() if chosen else None)
        except TrainingStopped as stop:
            stop.directory = directory
            raise
        except BaseException as failure:
            removed = ranks.main and created and directory.is_dir() and not (directory / CHECKPOINT_NAME).exists()
            if removed:
                shutil.rmtree(directory)  # a run that failed before its first checkpoint leaves nothing behind
            if isinstance(failure, NonFiniteLoss):
                raise nan_stopped(failure, directory, removed) from None
            raise
    distributed.barrier()  # the run's files are written before any process reads them
    return Run(directory, recipe.run.device)


def refuse_budget(source, recipe, resume, overrides: dict) -> None:
    """--budget chooses among the pretrained recipes for a folder of photos, and nowhere else: one line."""
    if resume is not None:
        raise SmallvisionError("--budget: a resumed run keeps the recipe it chose; leave --budget out")
    if recipe is not None:
        raise SmallvisionError(f"--budget chooses a recipe when none is named; --recipe {recipe} names one, which "
                               f"is used as it is: give one or the other")
    if overrides.get("layers") is not None or isinstance(overrides.get("model"), (Sequential, list, str)):
        raise SmallvisionError("--budget chooses among the pretrained recipes; a network of your own is trained by "
                               f"{DEFAULT_LAYERS_PHOTO_RECIPE}: leave --budget out")
    if source is not None and not is_photo_folder(source):
        raise SmallvisionError(f"--budget chooses among the pretrained recipes for a folder of photos; {source} is not "
                               f"one ({DEFAULT_RECIPE} trains it): leave --budget out")


def choose_default(source, recipe: Recipe, overrides: dict, device: torch.device, budget_seconds: float | None,
                   cache_dir=None, given: bool = True) -> Choice:
    """The pretrained recipe for this folder on this machine (budget.py): the splits counted as the run
    will have them, this machine's rates (measured once, then cached), the best that fits (`given`: the
    budget is the user's, so nothing fitting refuses; else the quickest is used)."""
    probe = with_backbone_preprocessing(recipe)
    rates = rates_here(probe, device, training_precision(probe.run.precision, device).precision, cache_dir)
    return choose(counts_here(source, recipe, overrides), rates, budget_seconds, overrides, given)


def counts_here(source, recipe: Recipe, overrides: dict) -> Counts:
    """The images per split the run of `recipe` on this folder (of photos, or of IDX files) will have (held-out
    splits carved)."""
    from smallvision.data.idx import read_idx
    from smallvision.data.mnist import IDX_FILES, find_idx_file, is_idx_directory

    if is_idx_directory(Path(source)):  # the labels files say how many (the images need not be read)
        files = {split: len(read_idx(find_idx_file(Path(source), IDX_FILES[(split, "labels")])))
                 for split in ("train", "test")}
    else:
        files = {split: len(paths) for split, paths in scan_folder(Path(source)).files.items()}
    fractions = held_out_splits(source, recipe.name, recipe, overrides)
    return counts_of(files, fractions.get("test_split", recipe.data.test_split),
                     fractions.get("val_split", recipe.data.val_split))


def estimate_here(source, recipe: Recipe, device: torch.device, cache_dir=None) -> float:
    """Seconds `recipe` would train and score this folder here (budget.estimate_seconds at this machine's
    rates for its network, measured once and cached): any recipe with an image size, from scratch too."""
    probe = with_backbone_preprocessing(recipe)
    rates = rates_here(probe, device, training_precision(probe.run.precision, device).precision, cache_dir)
    return estimate_seconds(probe, counts_here(source, recipe, {}), rates)


def resume(run: str | Path, progress: bool | str = "auto", data: str | Path | None = None, cache_dir=None,
           callbacks: list[Callback] = ()) -> Run:
    """Continue an unfinished run (stopped, killed or crashed) where its checkpoint left it: sv.resume(RUN)
    is sv.train(resume=RUN)."""
    return resume_run(run, data, progress, cache_dir, callbacks=callbacks)


def resume_run(path: str | Path, data=None, progress: bool | str = "auto", cache_dir=None, source=None, recipe=None,
               overrides: dict | None = None, callbacks: list[Callback] = ()) -> Run:
    """Continue an unfinished run from its checkpoint (or from its start, when it was stopped before the
    first one), with its own recipe and data, to the numbers the run would have had uninterrupted."""
    directory = Path(path)
    if not (directory / "recipe.toml").is_file() or not (directory / "training.json").is_file():
        raise SmallvisionError(f"{directory}: not a run that can be resumed (recipe.toml and training.json are "
                               f"written when a training starts; they are not there)")
    if (directory / "model.json").is_file() and not (directory / CHECKPOINT_NAME).is_file():
        raise SmallvisionError(f"{directory}: this run finished; there is nothing to resume")
    if source is not None or recipe is not None or overrides:
        given = ", ".join(filter(None, ["a source" if source is not None else "", "a recipe" if recipe else "",
                                        *sorted(overrides or {})]))
        raise SmallvisionError(f"a resumed run keeps its own source and recipe; leave out {given}")
    recipe = load_recipe(str(directory / "recipe.toml"))
    started, spec, data = started_source(directory, data)
    ranks, device = start_processes(recipe)
    progress = progress if ranks.main else "off"
    with training_lock(directory) if ranks.main else contextlib.nullcontext():
        try:
            train_into(directory, spec, recipe, device, data, progress, cache_dir, resuming=True, callbacks=callbacks,
                       recipe_choice=started.get("recipe_choice"))
        except TrainingStopped as stop:
            stop.directory = directory
            raise
        except NonFiniteLoss as failure:
            raise nan_stopped(failure, directory, removed=False) from None
    distributed.barrier()
    return Run(directory, recipe.run.device)


def started_source(directory: Path, data=None) -> tuple[dict, str, str | None]:
    """What a run was started with (training.json), its source and where its files are looked for; a
    folder that is not where it was is said as that, with what to do (the studio asks before Resume)."""
    try:
        started = json.loads((Path(directory) / "training.json").read_text())
        spec, data = started["source"], data or started.get("data")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise SmallvisionError(f"{Path(directory) / 'training.json'}: unreadable ({err})") from None
    if data is None and spec not in NAMED_SOURCES and not Path(spec).exists():
        raise SmallvisionError(f"{directory}: its source {spec} is not there any more (moved or renamed?); put it "
                               f"back there to resume: a run goes on with the photos it started with")
    return started, spec, data


def nan_stopped(failure: NonFiniteLoss, directory: Path, removed: bool) -> NonFiniteLoss:
    """The NaN guard's error, saying what became of the run: the checkpoint it keeps, or that it had none."""
    if (directory / CHECKPOINT_NAME).exists():
        kept = f"{directory} keeps its last checkpoint, with the last good weights"
    elif removed:
        kept = f"no checkpoint had been written yet, so nothing was kept ({directory} is removed)"
    else:
        kept = f"no checkpoint had been written yet: {directory} holds no weights"
    return NonFiniteLoss(f"{failure.what}; {kept}", failure.advice)


def start_processes(recipe: Recipe) -> tuple[distributed.Ranks, torch.device]:
    """This process's place among the others (one alone, unless torchrun started several) and its device."""
    device = resolve_device(recipe.run.device)
    return distributed.start(device), distributed.process_device(device)


def train_into(directory: Path, source, recipe: Recipe, device: torch.device, data, progress: bool | str,
               cache_dir=None, resuming: bool = False, callbacks: list[Callback] = (),
               recipe_choice: dict | None = None) -> None:
    """Load the source, fit, score on test, and write every file of the run into `directory`. The recipe
    and the data files are written before training starts, so a run stopped at any moment resumes.
    `recipe_choice`: why the default chose this recipe (budget.Choice), kept in metrics.json."""
    recipe = with_backbone_preprocessing(recipe)
    ranks = distributed.ranks()
    load_start = time.perf_counter()
    with distributed.main_first():  # rank 0 decodes; the others read its cache
        dataset = open_source(source, data, recipe.data.val_split, recipe.run.seed, recipe.data.test_split,
                              recipe_image_shape(recipe), cache_dir, shows(progress))
    load_seconds = time.perf_counter() - load_start
    for warning in dataset.warnings if ranks.main else ():
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if dataset.skipped and ranks.main:
        print(f"warning: every skipped file is listed with its reason in {directory / 'skipped.csv'}",
              file=sys.stderr, flush=True)
    pixels = sum(split.pixel_count for split in dataset.splits().values())
    one_batch = recipe.optimizer.batch_size * math.prod(dataset.train.shape[1:])
    if recipe.data.memory_budget != "auto" and parse_size(recipe.data.memory_budget) < one_batch:
        raise SmallvisionError(f"--memory-budget {recipe.data.memory_budget} is smaller than one batch ({recipe.optimizer.batch_size} "
                               f"images of {'x'.join(map(str, dataset.train.shape[1:]))}: {size(one_batch)}); "
                               f"give at least that, or a smaller --batch-size")
    copies = distributed.local_processes() if device.type == "cpu" else 1  # on GPUs, each its own memory
    streaming, why = data_path(pixels, recipe.data.memory_budget, device, copies) if dataset.mapped else (False, "")
    if dataset.mapped and not streaming:  # within the budget: in memory, as every split was before the map
        for name, split in dataset.splits().items():
            setattr(dataset, name, split.in_memory())
    elif streaming and ranks.main:
        print(f"{source}: {why}", file=sys.stderr, flush=True)
    train_split = dataset.train
    input_shape = tuple(train_split.shape[1:])
    if dataset.root is None and recipe.data.image_size and not recipe.network.backbone \
            and (recipe.data.image_size, recipe.data.image_size) != input_shape[1:]:
        # IDX files are trained on at their own size: a recipe saying otherwise would record what did not happen
        raise SmallvisionError(f"image_size {recipe.data.image_size}: {source} holds {input_shape[1]}x{input_shape[2]} "
                               f"images from IDX files, which are trained on at their own size, not resized; "
                               f"leave --image-size out")
    expected = recipe_image_shape(recipe)
    if expected and input_shape[0] != expected[0]:
        network = recipe.network.backbone or ("the network's Input" if recipe.network.layers else recipe.network.model)
        raise SmallvisionError(f"{network} takes {expected[0]}-channel images; "
                               f"{source} has {input_shape[0]} channels")
    torch.manual_seed(recipe.run.seed)  # the initial weights are part of what the seed fixes
    model = recipe_model(recipe, input_shape, len(dataset.class_names))
    model_name = model.model_name
    if getattr(model, "has_rescaling", False) and recipe.preprocess.rescale != 1.0:
        recipe = recipe.replace(rescale=1.0)  # Keras' way: the network scales the raw pixels itself
        print("the layers include Rescaling, so the pixels go in as 0-255 (rescale = 1 in this run's recipe)",
              file=sys.stderr, flush=True)
    choice = training_precision(recipe.run.precision, device)
    if choice.warning() and ranks.main:
        print(f"warning: {choice.warning()}", file=sys.stderr, flush=True)
    counts = torch.bincount(train_split.labels.cpu(), minlength=len(dataset.class_names)).tolist()
    weighting = class_weights(recipe.optimizer.class_weight, counts, dataset.class_names)
    if shows(progress):
        weighted = f"; {weighting.reason}" if weighting.weights else ""
        print(f"training {model_name} on {source} ({len(train_split):,} images) with recipe {recipe.name} on {device} "
              f"in {choice.precision} ({choice.reason}){weighted}", flush=True)
    # recipe.toml keeps what was asked ("auto" stays portable); the training and the run record the choice.
    chosen = recipe.replace(precision=choice.precision, class_weight=weighting.table(dataset.class_names))
    if resuming and (directory / "data.json").is_file():
        check_same_data(directory, dataset)
    elif ranks.main:
        write_data_files(directory, dataset, recipe)
    checkpoint = read_checkpoint(directory) if resuming else None
    resume = Resume(checkpoint) if checkpoint else None
    if resuming and shows(progress):
        where = resume.where() if resume else "its start (it stopped before its first checkpoint)"
        print(f"resuming {directory} from {where}", flush=True)
    with stop_on_signals() as stopper:
        # live.jsonl: the epochs as they end, for the studio's charts (a run trained in a terminal shows there too).
        # Before the checkpoint: a process killed between the two redoes an epoch the log has (charted twice, the
        # last one kept) rather than skipping one it lacks.
        callbacks = [stopper, *([LiveLog(directory, fresh=not resuming), Checkpointer(directory, recipe.run.checkpoint_minutes)]
                                if ranks.main else []), *callbacks]
        if recipe.network.backbone:  # two stages of their own; the checkpoint says which one it was written in
            history, test_metrics, fitted = fit_backbone_classifier(model, dataset, chosen, device, progress,
                                                                         cache_dir, callbacks, resume, streaming)
        else:
            loop = Loop(model, train_split, chosen, dataset.validation, device=device,
                        callbacks=[resume, *callbacks] if resume else callbacks, progress=progress,
                        streaming=streaming)
            history, test_metrics = loop.fit(), {}
    scoring = inference_precision(choice.precision, device)
    if not recipe.network.backbone:  # (a backbone's stages fit their own, above)
        # a temperature kept where it lowers the held-out images' NLL (calibration.py) and the unknown scorer
        # (unknown.py), on the validation split (the loop's last pass over it, where the weights are still the
        # ones it scored) or training images held out of the reference; every probability shown or exported
        # from here on is divided by the temperature, the test's below included
        fitted = fit_after_training(model, train_split, dataset.validation, recipe.preprocess, scoring, device,
                                    recipe.run.test_time_flip, recipe.run.unknown_rate, recipe.run.seed,
                                    reference_size(model, input_shape), loop.validated and loop.validated[1])
    calibration = fitted.calibration
    if fitted.why_no_unknown and ranks.main:
        print(f"warning: {fitted.why_no_unknown}; predictions will not say unknown", file=sys.stderr, flush=True)
    metrics = {"epochs": recipe.schedule.epochs, "train_seconds": round(history.train_seconds, 3),
               "load_seconds": round(load_seconds, 3),
               "images_per_second": round(history.images_per_second, 1)}
    if streaming:
        metrics["streamed_from_cache"] = True  # bigger than the memory budget: read from the mapped cache
    if history.stopped_early:
        metrics["stopped_early_after_epoch"] = history.stopped_early
    if history.compile_seconds:
        metrics["compile_seconds"] = round(history.compile_seconds, 3)  # paid before training, not in it
    if history.features_seconds:
        metrics["features_seconds"] = round(history.features_seconds, 3)  # from the cache: near 0
    if history.kept:  # keep_best: the weights are this epoch's, so are the validation figures
        metrics.update(kept_epoch=history.kept["epoch"], kept_by=recipe.run.keep_best)
        row = next(row for row in history.epochs if row["epoch"] == history.kept["epoch"])
        metrics.update(val_accuracy=row["val_accuracy"], val_loss=row["val_loss"])
    elif history.epochs and "val_accuracy" in history.epochs[-1]:
        metrics["val_accuracy"] = history.epochs[-1]["val_accuracy"]
        metrics["val_loss"] = history.epochs[-1]["val_loss"]
    if test_metrics:
        metrics.update(test_metrics)
    elif dataset.test is not None:
        metrics.update(split_scores(model, dataset.test, recipe.preprocess, scoring, device, recipe.run.test_time_flip,
                                    unknown=fitted.unknown).as_metrics("test", dataset.class_names))
    if ranks.world > 1:
        metrics["processes"] = ranks.world  # one run, trained by this many processes
    if not ranks.main:
        return  # rank 0 writes the run
    metrics.update(class_weight=weighting.table(dataset.class_names), class_weight_reason=weighting.reason)
    if calibration is not None:
        metrics["calibration"] = calibration.to_json()
    metrics["after_training_seconds"] = round(fitted.seconds, 3)  # the temperature and the unknown scorer fitted
    if fitted.unknown is not None:
        metrics["unknown"] = fitted.unknown.to_json()
    metrics.update(precision=choice.precision, precision_reason=choice.reason, seed=recipe.run.seed, device=str(device),
                   torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.machine(),
                   finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if recipe_choice:
        metrics["recipe_choice"] = recipe_choice
    # A layer list is the network itself, so the run reloads without knowing any name of ours.
    layers = None if recipe.network.backbone else layers_to_json(model.keras_layers)
    meta = RunMeta(
        source=str(source),
        architecture=Architecture(model=model_name, backbone=recipe.network.backbone, input_shape=input_shape,
                                  num_classes=len(dataset.class_names), dropout=recipe.network.dropout, layers=layers),
        class_names=dataset.class_names,
        output_activation=model.output_activation,
        precision=choice.precision,  # what the weights were trained in; inference follows the machine
        precision_reason=choice.reason,
        test_time_flip=recipe.run.test_time_flip,
        temperature=calibration.temperature if calibration is not None and calibration.kept else None,
        unknown=fitted.unknown.to_json() if fitted.unknown is not None else None,
        preprocessing=Preprocessing(
            rescale=recipe.preprocess.rescale, mean=recipe.preprocess.mean, std=recipe.preprocess.std, channels_last=recipe.preprocess.channels_last,
            resize="area when shrinking, bilinear when growing" if dataset.root else "none",
            color_mode="L" if input_shape[0] == 1 else "RGB",
            invert_light_background=has_dark_background(train_split.take(torch.arange(min(len(train_split), 1000))))),
    )
    try:
        if fitted.unknown is not None:
            fitted.unknown.save(directory)  # before model.json, which names it
        save_run(directory, model, recipe, meta, history.epochs, metrics)
    except OSError as err:  # a full disk, a lost permission: the last epoch's checkpoint holds the whole result
        raise SmallvisionError(f"{directory}: the run's files cannot be written ({err.strerror or err}); its last "
                               f"checkpoint is kept: make room, then `smallvision train --resume {directory}` "
                               f"writes them without training again") from None
    (directory / CHECKPOINT_NAME).unlink(missing_ok=True)  # a finished run needs no checkpoint


def write_data_files(directory: Path, dataset: DataSource, recipe: Recipe) -> None:
    """What the run was trained on, for audit, repetition and resuming: counts per split and class, the
    warnings, each split's fingerprint, every skipped file with its reason (skipped.csv), and each
    split's file list (splits/SPLIT.txt)."""
    counts = {split: dict(zip(dataset.class_names, images.class_counts())) for split, images in dataset.splits().items()}
    root = str(Path(dataset.root).resolve()) if dataset.root else None  # found again from anywhere
    summary = {"source": dataset.name, "root": root, "layout": dataset.layout, "seed": recipe.run.seed,
               "val_split": recipe.data.val_split, "test_split": recipe.data.test_split, "class_names": dataset.class_names,
               "counts": counts, "skipped": len(dataset.skipped), "warnings": dataset.warnings,
               "fingerprints": split_fingerprints(dataset), "fingerprint_kind": FINGERPRINT_KIND}
    if dataset.root is not None:
        with open(directory / "skipped.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "reason"])
            writer.writerows(dataset.skipped)
        (directory / "splits").mkdir(exist_ok=True)
        for split, images in dataset.splits().items():
            lines = [f"{path}\t{images.class_names[label]}" for path, label in zip(images.paths, images.labels.tolist())]
            (directory / "splits" / f"{split}.txt").write_text("".join(line + "\n" for line in lines))
    # Last and whole: a resumed run checks its data against data.json only once everything above is there.
    write_atomically(directory / "data.json", lambda p: p.write_text(json.dumps(summary, indent=2)))


def check_same_data(directory: Path, dataset: DataSource) -> None:
    """Refuse to resume on data that changed since the run started, naming what changed."""
    summary = json.loads((directory / "data.json").read_text())
    if summary.get("class_names") != dataset.class_names:
        raise SmallvisionError(f"the source's classes changed since {directory} started: {summary.get('class_names')} "
                               f"then, {dataset.class_names} now; start a new run")
    # a run started before fingerprints used the files' hashes was fingerprinted by its pixels
    now = split_fingerprints(dataset, by_pixels=summary.get("fingerprint_kind") != FINGERPRINT_KIND)
    for split, then in summary.get("fingerprints", {}).items():
        if now.get(split) == then:
            continue
        detail = ""
        listed = directory / "splits" / f"{split}.txt"
        if listed.is_file() and split in dataset.splits():
            before = set(listed.read_text().splitlines())
            images = dataset.split(split)
            after = {f"{path}\t{images.class_names[label]}" for path, label in zip(images.paths, images.labels.tolist())}
            changed = sorted(before ^ after)
            detail = f" ({len(changed)} files differ, e.g. {changed[0].split(chr(9))[0]})" if changed else \
                " (the same files, with other contents)"
        raise SmallvisionError(f"the {split} split changed since {directory} started{detail}; resuming would not "
                               f"give the run it was; start a new run")
