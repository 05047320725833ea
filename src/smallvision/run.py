"""A run directory: what a training wrote, and everything that reads it back (predict, evaluate)."""

import csv
import json
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from smallvision.data.imageset import ImageSet
from smallvision.data.sources import open_source
from smallvision.errors import SmallvisionError
from smallvision.files import write_atomically
from smallvision.images import expand_image_paths, load_image
from smallvision.models import build_network, create_model
from smallvision.models.layer_text import layers_from_json
from smallvision.precision import inference_precision
from smallvision.progress import progress_bar
from smallvision.recipe import Recipe
from smallvision.train import Preprocess, predict_probabilities, resolve_device

RUN_FILES = ("model.json", "model.safetensors", "recipe.toml")
PREDICT_CHUNK = 256  # image files decoded and classified together by predict


def is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in RUN_FILES)


def prepare_run_dir(out: str | Path | None, label: str, force: bool = False) -> Path:
    """A directory ready for a new run's files, checked before any training is spent.

    Refuses (unless `force`) a directory that already holds files, so nothing is overwritten.
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{label}-{stamp}"
        suffix = 1
        while out.exists():
            suffix += 1
            out = Path("runs") / f"{label}-{stamp}-{suffix}"
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SmallvisionError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
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


def save_run(directory: Path, model, recipe: Recipe, meta: dict, history: list[dict], metrics: dict) -> None:
    """Write a run's files; history.csv and curves.png only when there is a history (an imported network
    has none)."""
    weights = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    write_atomically(directory / "model.safetensors", lambda p: save_file(weights, str(p)))
    write_atomically(directory / "model.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    write_atomically(directory / "recipe.toml", lambda p: p.write_text(recipe.to_toml()))
    write_atomically(directory / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2)))
    if history:
        from smallvision.plots import plot_curves  # matplotlib is slow to import; only training needs it

        write_atomically(directory / "history.csv", lambda p: write_history(p, history))
        write_atomically(directory / "curves.png",
                         lambda p: plot_curves(history, p, f"{meta['source']} · {recipe.name}"))


def write_history(path: Path, history: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in history for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


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
        try:
            self.meta = json.loads((self.path / "model.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SmallvisionError(f"{self.path / 'model.json'}: unreadable ({err})") from None
        self.recipe = Recipe.from_toml((self.path / "recipe.toml").read_text(), str(self.path / "recipe.toml"))
        self.device = resolve_device(device)
        try:
            self.class_names: list[str] = self.meta["class_names"]
            architecture = self.meta["architecture"]
            # The run's safetensors hold every weight: a backbone needs no pretrained ones here.
            if architecture.get("layers") is not None:  # the network itself, written by every run since layer lists
                layers = layers_from_json(architecture["layers"], str(self.path / "model.json"))
                self.model = build_network(layers, architecture["input_shape"], architecture["num_classes"],
                                           name=architecture["model"])
            else:  # a backbone, or a run from before: by name
                self.model = create_model(architecture["model"], architecture["input_shape"],
                                          architecture["num_classes"], architecture.get("dropout", 0.0),
                                          architecture.get("backbone"), pretrained=False)
            pre = self.meta["preprocessing"]
            self.preprocess = Preprocess(pre["rescale"], pre["mean"], pre["std"], pre["channels_last"])
        except (KeyError, TypeError) as err:
            what = f"no {err.args[0]!r} field" if isinstance(err, KeyError) else f"a field of the wrong kind: {err}"
            raise SmallvisionError(f"{self.path / 'model.json'}: not a run's model description ({what})") from None
        self.test_time_flip = bool(self.meta.get("test_time_flip", False))
        # Inference follows this machine, not the run: a bf16 run is scored in fp32 where bf16 is emulated.
        self.precision = inference_precision(self.meta.get("precision", "fp32"), self.device)
        weights = self.path / "model.safetensors"
        try:
            self.model.load_state_dict(load_file(str(weights)))
        except (SafetensorError, OSError) as err:
            raise SmallvisionError(f"{weights}: unreadable ({err}); the file is damaged or incomplete") from None
        except RuntimeError as err:  # names or shapes that do not fit the network model.json describes
            first = str(err).strip().splitlines()[-1].strip()
            raise SmallvisionError(f"{weights}: its weights do not fit the network in model.json ({first})") from None
        self.model.to(self.device).eval()
        if pre["channels_last"]:
            self.model.to(memory_format=torch.channels_last)

    @property
    def metrics(self) -> dict:
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, classes] for uint8 images [N, C, H, W] of the run's input shape."""
        return predict_probabilities(self.model, images, self.preprocess, self.precision, self.device,
                                     self.test_time_flip)

    def read_image(self, path: str | Path) -> torch.Tensor:
        """One image file as uint8 [C, H, W], converted as the run's preprocessing says."""
        channels, height, width = self.meta["architecture"]["input_shape"]
        invert = self.meta["preprocessing"].get("invert_light_background", False)
        return load_image(path, channels, height, width, invert)

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
        if top < 1:
            raise SmallvisionError(f"top must be at least 1, got {top}")
        files = expand_image_paths(paths)
        bar = progress_bar(progress, total=len(files), desc="predicting", unit="img", delay=1.0)
        for start in range(0, len(files), PREDICT_CHUNK):
            chunk = files[start:start + PREDICT_CHUNK]
            results, readable, images = [None] * len(chunk), [], []
            for index, path in enumerate(chunk):
                try:
                    images.append(self.read_image(path))
                    readable.append(index)
                except SmallvisionError as err:  # one damaged file must not cost the answers for the others
                    results[index] = {"path": str(path), "error": str(err)}
            if images:
                for index, probabilities in zip(readable, self.probabilities(torch.stack(images))):
                    results[index] = self.prediction(chunk[index], probabilities, top)
            bar.update(len(chunk))
            yield from results
        bar.close()

    def prediction(self, path: Path, probabilities: torch.Tensor, top: int) -> dict:
        """predict's answer for one file: its `top` classes, most probable first."""
        values, indices = probabilities.topk(min(top, len(self.class_names)))
        ranked = [[self.class_names[i], round(float(v), 6)] for v, i in zip(values, indices)]
        return {"path": str(path), "label": ranked[0][0], "probability": ranked[0][1], "top": ranked}

    def labelled_split(self, source: str | Path | None = None, split: str = "test", data_dir: str | Path | None = None,
                       cache_dir: str | Path | None = None, progress: bool = False) -> ImageSet:
        """One split of a labelled source (default: the run's own), checked against the run's classes and input."""
        source = source or self.meta["source"]
        shape = tuple(self.meta["architecture"]["input_shape"])
        # The run's own source is split again by the run's rule, so its held-out images are the same ones.
        own = str(source) == self.meta["source"]
        rule = self.recipe if own else Recipe()
        if own and not Path(source).exists():
            source = self.trained_root() or source  # a relative path given from another directory
        data = open_source(source, data_dir, rule.val_split, self.recipe.seed, rule.test_split, shape, cache_dir,
                           progress=progress, for_training=False).split(split)
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

    def evaluate(self, source: str | Path | None = None, split: str = "test", data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> dict:
        """Accuracy, log loss, per-class scores and the confusion matrix on a labelled source whose classes
        match the run's. Writes nothing: `smallvision.evaluation.evaluate_run` writes the pictures too."""
        from smallvision.evaluation import evaluate_run  # it builds on this module

        return evaluate_run(self, source, split, data_dir, cache_dir, write=False).metrics


def load_run(path: str | Path, device: str = "auto") -> Run:
    return Run(path, device)
