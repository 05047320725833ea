"""A run directory: what a training wrote, and everything that reads it back (predict, evaluate)."""

import contextlib
import csv
import json
import os
import socket
import time
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from smallvision.data.imageset import ImageSet
from smallvision.data.folders import is_image_folder, scan_folder
from smallvision.data.sources import open_source
from smallvision.errors import SmallvisionError
from smallvision.files import write_atomically
from smallvision.images import expand_image_paths, load_image
from smallvision.metrics import classification_metrics
from smallvision.calibration import set_temperature
from smallvision.unknown import UnknownScorer
from smallvision.models import build_network, create_model
from smallvision.models.layer_text import layers_from_json
from smallvision.precision import inference_precision
from smallvision.predictions import answer, predict_files, scored_rows
from smallvision.recipe import Preprocess, Recipe, load_recipe
from smallvision.inference import (predict_probabilities, resolve_device, scores_with_unknown, split_outputs,
                                   split_probabilities)
from smallvision.runmeta import RunMeta

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two trainings into one directory are not caught there
    fcntl = None

RUN_FILES = ("model.json", "model.safetensors", "recipe.toml")
WHOLE = "all"  # the split name that scores every image of a source
LOCK_NAME = ".training.lock"


def is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def run_dir_name(out: str | Path | None, label: str) -> Path:
    """`out`, or with none a new directory under runs/ named after `label` and the time."""
    if out is not None:
        return Path(out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path("runs") / f"{label}-{stamp}"
    suffix = 1
    while out.exists():
        suffix += 1
        out = Path("runs") / f"{label}-{stamp}-{suffix}"
    return out


def prepare_run_dir(out: str | Path | None, label: str, force: bool = False) -> Path:
    """A directory ready for a new run's files, checked before any training is spent.

    Refuses (unless `force`) a directory that already holds files, so nothing is overwritten.
    """
    out = run_dir_name(out, label)
    if out.exists() and not out.is_dir():
        raise SmallvisionError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(entry.name != LOCK_NAME for entry in out.iterdir()) and not force:
        if (out / "training.json").is_file() and not (out / "model.json").is_file():
            raise SmallvisionError(f"{out}: holds an unfinished run; continue it with `smallvision train --resume "
                                   f"{out}`, choose another --out, or pass --force to start it again")
        what = "already holds a run" if is_run(out) else "exists, is not empty and is not a smallvision run"
        raise SmallvisionError(f"{out}: {what}; choose another --out, or pass --force to write into it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".smallvision-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise SmallvisionError(f"{out}: cannot write there ({err.strerror or err})") from None
    return out


def writable_directory(path: str | Path) -> Path:
    """`path` as a directory that exists, or one clear error saying why it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SmallvisionError(f"{path}: cannot write there ({err.strerror or err})") from None
    return path


def save_run(directory: Path, model, recipe: Recipe, meta: RunMeta, history: list[dict], metrics: dict) -> None:
    """Write a run's files; history.csv and curves.png only when there is a history (an imported network
    has none)."""
    weights = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    write_atomically(directory / "model.safetensors", lambda p: save_file(weights, str(p)))
    meta.write(directory / "model.json")
    write_atomically(directory / "recipe.toml", lambda p: p.write_text(recipe.to_toml()))
    write_atomically(directory / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2)))
    if history:
        from smallvision.plots import plot_curves  # matplotlib is slow to import; only training needs it

        write_atomically(directory / "history.csv", lambda p: write_history(p, history))
        write_atomically(directory / "curves.png",
                         lambda p: plot_curves(history, p, f"{meta.source} · {recipe.name}",
                                                 metrics.get("kept_epoch")))


@contextlib.contextmanager
def training_lock(directory: Path):
    """Held while a training writes `directory`: a second training aimed at it at the same time (a new
    one with --force, or a --resume) is refused. The kernel lets go of the lock when its process ends,
    however it ends, so a run killed with kill -9 resumes with nothing to clean up."""
    path = directory / LOCK_NAME
    if directory.exists() and not directory.is_dir():
        raise SmallvisionError(f"{directory}: exists and is not a directory; choose another --out")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as err:
        raise SmallvisionError(f"{directory}: cannot write there ({err.strerror or err})") from None
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # the file may have been removed by the holder it belonged to between our open and our lock
                locked_ours = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
            except OSError:
                locked_ours = False
            if not locked_ours:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise SmallvisionError(f"{directory}: another training is writing this run now ({holder}); wait for "
                                       f"it to end, or stop it (Ctrl-C there leaves a checkpoint to --resume)")
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still holding it: a later training makes a new one


def write_history(path: Path, history: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in history for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def read_history(path: Path) -> list[dict]:
    """history.csv as write_history wrote it, numbers as numbers and an empty cell (an epoch without a
    validation) as None; [] for a run without one (imported from Keras)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{key: float(value) if value else None for key, value in row.items()} for row in csv.DictReader(handle)]


class Run:
    """A trained model and what it was trained with, read from a run directory."""

    def __init__(self, path: str | Path, device: str = "auto"):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SmallvisionError(f"{self.path}: no such run directory")
        missing = [name for name in RUN_FILES if not (self.path / name).is_file()]
        if missing and (self.path / "training.json").is_file():
            raise SmallvisionError(f"{self.path}: an unfinished run (stopped before its end); continue it with "
                                   f"`smallvision train --resume {self.path}`")
        if missing:
            raise SmallvisionError(f"{self.path}: not a smallvision run ({', '.join(missing)} missing)")
        description = self.path / "model.json"
        self.meta = RunMeta.read(description)  # every field checked here, once
        self.recipe = load_recipe(str(self.path / "recipe.toml"))
        self.device = resolve_device(device)
        self.class_names: list[str] = list(self.meta.class_names)
        architecture, pre = self.meta.architecture, self.meta.preprocessing
        try:
            # The run's safetensors hold every weight: a backbone needs no pretrained ones here.
            if architecture.layers is not None:  # the network itself, written by every run since layer lists
                layers = layers_from_json(architecture.layers, str(description))
                # Shapes first, on the meta device (no memory): a model.json cannot ask for more than the
                # weights file holds. The sketch's layers are spent on it, so the network is read again.
                with torch.device("meta"):
                    sketch = build_network(layers, architecture.input_shape, architecture.num_classes,
                                           name=architecture.model)
                weights_fit(sketch, self.path / "model.safetensors")
                self.model = build_network(layers_from_json(architecture.layers, str(description)),
                                           architecture.input_shape, architecture.num_classes,
                                           name=architecture.model)
            else:  # a backbone, or a run from before: by name
                self.model = create_model(architecture.model, architecture.input_shape, architecture.num_classes,
                                          architecture.dropout, architecture.backbone, pretrained=False)
        except SmallvisionError as err:  # whitespace collapsed: a name from the file may hold a newline
            raise SmallvisionError(f"{description}: the network it describes cannot be built: "
                                   f"{' '.join(str(err).split())}") from None
        except (KeyError, TypeError, ValueError) as err:  # layer_from_json takes each entry's shape on trust
            raise SmallvisionError(f"{description}: not a run's model description (a layer of the wrong kind: "
                                   f"{type(err).__name__}: {err})") from None
        try:  # the values' ranges, checked as a recipe's are (RunMeta checked their types)
            self.preprocess = Preprocess(pre.rescale, pre.mean, pre.std, pre.channels_last)
        except SmallvisionError as err:
            raise SmallvisionError(f"{description}: not a run's model description ({err})") from None
        self.test_time_flip = self.meta.test_time_flip
        # Inference follows this machine, not the run: a bf16 run is scored in fp32 where bf16 is emulated.
        self.precision = inference_precision(self.meta.precision, self.device)
        weights = self.path / "model.safetensors"
        try:
            self.model.load_state_dict(load_file(str(weights)))
        except (SafetensorError, OSError) as err:
            reason = " ".join(str(err).split())  # safetensors quotes a damaged header's text, newlines and all
            raise SmallvisionError(f"{weights}: unreadable ({reason}); the file is damaged or incomplete") from None
        except RuntimeError as err:  # names or shapes that do not fit the network model.json describes
            first = str(err).strip().splitlines()[-1].strip()
            raise SmallvisionError(f"{weights}: its weights do not fit the network in model.json ({first})") from None
        self.model.to(self.device).eval()
        if pre.channels_last:
            self.model.to(memory_format=torch.channels_last)
        set_temperature(self.model, self.meta.temperature)  # calibration's, where the run kept one
        # "none of these" (unknown.py): absent from runs trained before it and Keras imports until `calibrate`
        self.unknown = UnknownScorer.load(self.path, self.meta.unknown) if self.meta.unknown is not None else None

    @property
    def metrics(self) -> dict:
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, classes] for uint8 images [N, C, H, W] of the run's input shape."""
        return predict_probabilities(self.model, images, self.preprocess, self.precision, self.device,
                                     self.test_time_flip)

    def probabilities_and_unknown(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(`probabilities`, the unknown scores [N]) from one pass; None for the scores in a run without a
        scorer."""
        if self.unknown is None:
            return self.probabilities(images), None
        return scores_with_unknown(self.model, images, self.preprocess, self.precision, self.device,
                                   self.test_time_flip, self.unknown)

    def split_probabilities(self, data: ImageSet) -> torch.Tensor:
        """`probabilities` for a labelled split, a chunk at a time when it is mapped from the decode cache."""
        return split_probabilities(self.model, data, self.preprocess, self.precision, self.device, self.test_time_flip)

    def read_image(self, path: str | Path) -> torch.Tensor:
        """One image file as uint8 [C, H, W], converted as the run's preprocessing says."""
        channels, height, width = self.meta.architecture.input_shape
        return load_image(path, channels, height, width, self.meta.preprocessing.invert_light_background)

    def load_images(self, paths: list[str | Path]) -> tuple[list[Path], torch.Tensor]:
        files = expand_image_paths(paths)
        return files, torch.stack([self.read_image(f) for f in files])

    def predict(self, paths: list[str | Path], top: int = 5, progress: bool = False) -> list[dict]:
        """One dict per image file (directories are searched): path, label, probability, and the `top`
        labels with their probabilities; for a file that cannot be read, path and error instead."""
        return list(self.predict_each(paths, top, progress))

    def predict_each(self, paths: list[str | Path], top: int = 5, progress: bool = False):
        """`predict`, one dict at a time in file order, a chunk of files at a time: the first answers come
        at once and memory stays bounded however many files there are."""
        yield from predict_files(paths, top, progress, self.read_image, self.answer_rows, self.prediction)

    def answer_rows(self, images: list[torch.Tensor]) -> list:
        """predict_files' rows for a chunk of images: (probabilities, unknown score or None) per image."""
        probabilities, scores = self.probabilities_and_unknown(torch.stack(images))
        return scored_rows(probabilities, scores)

    def prediction(self, path: Path, row: tuple, top: int) -> dict:
        """predict's answer for one file: its `top` classes, most probable first, and where the run has an
        unknown scorer, `unknown` and `unknown_score`."""
        probabilities, score = row
        return answer(path, self.class_names, probabilities.numpy(), top,
                      None if score is None else (score, self.unknown.threshold))

    def split_to_score(self, source: str | Path | None = None, split: str | None = None) -> str:
        """`split`, or when none is named: "test", except for a folder of class folders (ROOT/CLASS/*) that is
        not the run's own source: new labelled photos, scored whole (WHOLE)."""
        if split:
            return split
        source = source or self.meta.source
        if str(source) != self.meta.source and Path(source).is_dir() and is_image_folder(Path(source)):
            if scan_folder(Path(source)).layout == "classes":
                return WHOLE
        return "test"

    def labelled_split(self, source: str | Path | None = None, split: str = "test", data_dir: str | Path | None = None,
                       cache_dir: str | Path | None = None, progress: bool = False) -> ImageSet:
        """One split of a labelled source (default: the run's own), or with WHOLE every image of it, checked
        against the run's classes and input."""
        source = source or self.meta.source
        shape = self.meta.architecture.input_shape
        # The run's own source is split again by the run's rule, so its held-out images are the same ones.
        own = str(source) == self.meta.source
        rule = self.recipe if own else Recipe()
        if own and not Path(source).exists():
            source = self.trained_root() or source  # a relative path given from another directory
        opened = open_source(source, data_dir, rule.data.val_split, self.recipe.run.seed, rule.data.test_split, shape,
                             cache_dir, progress=progress, for_training=False)
        if split == WHOLE:
            parts = list(opened.splits().values())
            data = ImageSet(torch.cat([part.images for part in parts]), torch.cat([part.labels for part in parts]),
                            parts[0].class_names, sum((part.paths or [] for part in parts), []) or None)
        else:
            data = opened.split(split)
        if data.class_names != self.class_names:
            raise SmallvisionError(f"{source}: its classes {data.class_names[:10]} differ from the run's {self.class_names[:10]}")
        if tuple(data.images.shape[1:]) != shape:
            raise SmallvisionError(f"{source}: images are {tuple(data.images.shape[1:])}, the run expects {shape}")
        return data

    def trained_root(self) -> str | None:
        """The absolute path of the image folder the run was trained on, when it still exists."""
        summary = self.path / "data.json"
        root = json.loads(summary.read_text()).get("root") if summary.is_file() else None
        return root if root and Path(root).is_dir() else None

    def evaluate(self, source: str | Path | None = None, split: str | None = None, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> dict:
        """Accuracy, log loss, per-class scores and the confusion matrix on a labelled source whose classes
        match the run's. Writes nothing: `smallvision.evaluation.evaluate_run` writes the pictures too."""
        return self.score(source, split, data_dir, cache_dir)[0]

    def default_source(self) -> str:
        """What the run is scored on when no source is named: the source it was trained on; for a network
        imported from Keras, the labelled source its import named (`import-keras --source`)."""
        imported = self.meta.imported_from
        if imported is None:
            return self.meta.source
        if imported.source:
            return imported.source
        raise SmallvisionError(f"{self.path}: imported from {Path(imported.file).name} without --source, so it knows "
                               f"no source to score on; name one: `smallvision evaluate {self.path} SOURCE`")

    def score(self, source: str | Path | None = None, split: str | None = None, data_dir: str | Path | None = None,
              cache_dir: str | Path | None = None, progress: bool = False
              ) -> tuple[dict, ImageSet, torch.Tensor, torch.Tensor | None]:
        """(metrics, the labelled split, its probabilities) on `split` of `source` (default: the source it was
        trained on; with no split named, its test split, or the whole of a folder of class folders:
        `split_to_score`), and its unknown scores (None without a scorer). `evaluate` gives the metrics, the share
        called unknown among them; `evaluation.evaluate_run` writes the files from all four."""
        source = source or self.default_source()
        split = self.split_to_score(source, split)
        data = self.labelled_split(source, split, data_dir, cache_dir, progress)
        scores = None
        if self.unknown is None:
            probabilities = self.split_probabilities(data)
        else:
            outputs = split_outputs(self.model, data, self.preprocess, self.precision, self.device, self.test_time_flip,
                                    self.unknown)
            probabilities = outputs.probabilities(self.model)
            scores = outputs.scores
        metrics = {"source": str(source), "split": split,
                   **classification_metrics(data.labels, probabilities, self.class_names)}
        if scores is not None:
            metrics.update(unknown_rate=round(float(self.unknown.is_unknown(scores).float().mean()), 6),
                           unknown_threshold=self.unknown.threshold)
        if split == WHOLE:
            metrics["scored"] = "every image: a folder of class folders that is not the run's own source"
        return metrics, data, probabilities, scores


def weights_fit(model, weights: Path) -> None:
    """Refuse, before any memory is spent, a network whose tensors are not the weights file's."""
    try:
        with safe_open(str(weights), "pt") as handle:
            stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        reason = " ".join(str(err).split())
        raise SmallvisionError(f"{weights}: unreadable ({reason}); the file is damaged or incomplete") from None
    wanted = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    if stored != wanted:
        differ = sorted(set(stored) ^ set(wanted)) or [name for name in wanted if stored[name] != wanted[name]]
        raise SmallvisionError(f"{weights}: its weights do not fit the network in model.json ({differ[0]}: "
                               f"{stored.get(differ[0])} in the file, {wanted.get(differ[0])} in the network)")


def load_run(path: str | Path, device: str = "auto") -> Run:
    return Run(path, device)
