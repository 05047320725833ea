"""A recipe: every choice a run makes, read from and written to TOML."""

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import tomli_w

from smallvision.errors import SmallvisionError, unknown_name
from smallvision.precision import PRECISIONS

CHOICES = {
    "optimizer": ("rmsprop", "adam", "adamw", "sgd"),
    "schedule": ("constant", "onecycle", "cosine"),
    "loss": ("categorical_crossentropy", "binary_crossentropy"),
    "fill_mode": ("nearest", "reflect", "wrap", "constant"),
    "precision": PRECISIONS,
    "device": ("auto", "cpu", "cuda"),
    "compile": ("off", "default", "reduce-overhead", "max-autotune"),
}
KEEP_BEST = ("val_accuracy", "val_loss")


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    # the network, by name (see `smallvision summary`), and its Dropout rate where it has one
    model: str = "mnist_convnet"
    # or the network written as layers in Keras' words, one string per layer (or all in one string), e.g.
    # ["Conv2D(32, 3, activation='relu')", "MaxPooling2D(2)", "Flatten()", "Dense(10, activation='softmax')"];
    # it replaces model, and any Dropout is written among the layers
    layers: str | list[str] | None = None
    # a pretrained timm network to build on instead (frozen, with a new Dropout + Dense head); its own
    # input size, mean and std are used unless image_size, mean and std are given
    backbone: str | None = None
    # fine-tuning, a second stage after the head has trained on the frozen backbone: the backbone's last
    # fine_tune_blocks blocks (and its final convolution) train too, for fine_tune_epochs at fine_tune_learning_rate
    fine_tune_blocks: int = 0
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5
    dropout: float = 0.0
    # image folders are decoded to image_size x image_size, in color_mode "rgb" or "grayscale"
    # (unset: the model's own input size and channels)
    image_size: int | None = None
    color_mode: str | None = None
    # data: fractions held out, stratified and seeded, when the source has no such split; 0 means none
    val_split: float = 0.0
    test_split: float = 0.0
    # augmentation of training images, with ImageDataGenerator's names and meaning: degrees for
    # rotation and shear; shifts as a fraction of the size (below 1) or pixels; zoom z is
    # [1 - z, 1 + z] or a [low, high] pair; brightness a [low, high] factor; fill_mode for the
    # border that comes into view: nearest, reflect, wrap or constant (with cval)
    rotation_range: float = 0.0
    width_shift_range: float = 0.0
    height_shift_range: float = 0.0
    shear_range: float = 0.0
    zoom_range: float | list[float] = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    brightness_range: list[float] | None = None
    fill_mode: str = "nearest"
    cval: float = 0.0
    # score each validation and test image as the mean of it and its mirror image
    test_time_flip: bool = False
    # preprocessing: pixel * rescale, then (x - mean) / std when both are given (one value, or one per channel)
    rescale: float = 1 / 255
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    # optimisation, with Keras' names and defaults
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3
    rho: float = 0.9
    momentum: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    weight_decay: float = 0.0
    # learning-rate schedule over all steps; warmup is a fraction of them (onecycle)
    schedule: str = "constant"
    warmup: float = 0.0
    loss: str = "categorical_crossentropy"
    label_smoothing: float = 0.0
    batch_size: int = 64
    epochs: int = 5
    # batches per epoch, drawn cycling through the shuffled training set, as Keras' fit; 0: one pass
    steps_per_epoch: int = 0
    # validate every validation_freq epochs (and after the last), as Keras' fit
    validation_freq: int = 1
    # bf16 runs matrix work in bfloat16 with float32 weights (autocast); auto: bf16 where the training
    # device computes it natively, fp32 elsewhere (precision.py; the run records what it chose and why)
    precision: str = "auto"
    channels_last: bool = True
    # torch.compile the training step's forward and backward with this mode ("reduce-overhead": CUDA
    # graphs on a GPU); off by default: on the CPU it was slower for these networks. Its seconds are
    # paid before the first step and reported apart (metrics.json: compile_seconds)
    compile: str = "off"
    # a checkpoint is written after every epoch and, inside a long one, every checkpoint_minutes
    checkpoint_minutes: float = 5.0
    # keep the weights of the best validation ("val_accuracy" or "val_loss"), as Keras'
    # ModelCheckpoint(save_best_only=True), and stop after early_stopping_patience validations without
    # improvement (0: never), restoring them, as Keras' EarlyStopping(restore_best_weights=True)
    keep_best: str | None = None
    early_stopping_patience: int = 0
    # the most the training data may take in memory (or GPU memory, where it would sit on the GPU), e.g.
    # "1GB"; auto: half of what is available. A bigger folder trains from the memory-mapped decode cache
    memory_budget: str = "auto"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.layers is not None:
            self.layers = written_layers(self.layers)
            if self.backbone:
                raise SmallvisionError("give a network as layers or a pretrained backbone, not both")
            if self.dropout:
                raise SmallvisionError("with layers, write the Dropout among them (Dropout(0.5)); leave dropout at 0")
        for field in fields(self):  # NaN would pass every range check below: each comparison with it is False
            value = getattr(self, field.name)
            if any(isinstance(v, float) and math.isnan(v) for v in (value if isinstance(value, list) else [value])):
                raise SmallvisionError(f"{field.name} must be a number, got {value}")
        for field, allowed in CHOICES.items():
            if getattr(self, field) not in allowed:
                raise unknown_name(field, str(getattr(self, field)), list(allowed))
        if self.memory_budget != "auto":
            from smallvision.data.cache import parse_size

            parse_size(self.memory_budget)
        if self.keep_best is not None and self.keep_best not in KEEP_BEST:
            raise unknown_name("keep_best", str(self.keep_best), list(KEEP_BEST))
        if self.color_mode not in (None, "rgb", "grayscale"):
            raise unknown_name("color_mode", str(self.color_mode), ["rgb", "grayscale"])
        if self.backbone and self.color_mode == "grayscale":
            raise SmallvisionError("a pretrained backbone takes colour images; leave color_mode unset or \"rgb\"")
        if self.fine_tune_blocks < 0 or self.fine_tune_epochs < 0:
            raise SmallvisionError("fine_tune_blocks and fine_tune_epochs must not be negative")
        if self.fine_tune_blocks and not (self.backbone and self.fine_tune_epochs):
            raise SmallvisionError("fine-tuning needs a backbone and fine_tune_epochs above 0")
        for field in ("epochs", "batch_size", "validation_freq"):
            if getattr(self, field) < 1:
                raise SmallvisionError(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.early_stopping_patience < 0:
            raise SmallvisionError(f"early_stopping_patience must be 0 (never stop early) or more, "
                                   f"got {self.early_stopping_patience}")
        if self.early_stopping_patience and not self.keep_best:
            self.keep_best = "val_loss"  # Keras' EarlyStopping watches val_loss unless told otherwise
        if self.steps_per_epoch < 0:
            raise SmallvisionError(f"steps_per_epoch must be 0 (one pass) or more, got {self.steps_per_epoch}")
        if self.image_size is not None and self.image_size < 8:
            raise SmallvisionError(f"image_size must be at least 8 pixels, got {self.image_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise SmallvisionError(f"dropout must be in [0, 1), got {self.dropout}")
        for field in ("rotation_range", "width_shift_range", "height_shift_range", "shear_range", "cval"):
            if getattr(self, field) < 0:
                raise SmallvisionError(f"{field} must not be negative, got {getattr(self, field)}")
        low, high = self.zoom_bounds
        if not 0 < low <= high:
            raise SmallvisionError(f"zoom_range must be a float in [0, 1) or a [low, high] pair with 0 < low <= high, "
                                   f"got {self.zoom_range}")
        if self.brightness_range is not None and (len(self.brightness_range) != 2
                                                  or not 0 <= self.brightness_range[0] <= self.brightness_range[1]):
            raise SmallvisionError(f"brightness_range must be a [low, high] pair with 0 <= low <= high, "
                                   f"got {self.brightness_range}")
        if self.checkpoint_minutes <= 0:
            raise SmallvisionError(f"checkpoint_minutes must be positive, got {self.checkpoint_minutes}")
        for field in ("learning_rate", "fine_tune_learning_rate", "epsilon"):
            if not 0 < getattr(self, field) < math.inf:
                raise SmallvisionError(f"{field} must be a positive number, got {getattr(self, field)}")
        for field in ("rho", "beta_1", "beta_2", "momentum", "label_smoothing"):  # the optimiser's rates of decay
            if not 0.0 <= getattr(self, field) < 1.0:
                raise SmallvisionError(f"{field} must be in [0, 1), got {getattr(self, field)}")
        if not 0.0 <= self.weight_decay < math.inf:
            raise SmallvisionError(f"weight_decay must be 0 or more, got {self.weight_decay}")
        for field in ("val_split", "test_split"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise SmallvisionError(f"{field} must be in [0, 1), got {getattr(self, field)}")
        if self.val_split + self.test_split >= 1.0:
            raise SmallvisionError("val_split + test_split must leave some images to train on")
        if not 0.0 <= self.warmup < 1.0:
            raise SmallvisionError(f"warmup must be in [0, 1), got {self.warmup}")
        if (self.mean is None) != (self.std is None):
            raise SmallvisionError("give both mean and std, or neither")

    @property
    def zoom_bounds(self) -> tuple[float, float]:
        """Keras' reading of zoom_range: a float z is [1 - z, 1 + z]; a pair is itself."""
        if isinstance(self.zoom_range, list):
            return (self.zoom_range[0], self.zoom_range[1]) if len(self.zoom_range) == 2 else (0.0, -1.0)
        return 1.0 - self.zoom_range, 1.0 + self.zoom_range

    @property
    def augments(self) -> bool:
        """Whether training images are transformed at all."""
        return bool(self.rotation_range or self.width_shift_range or self.height_shift_range or self.shear_range
                    or self.zoom_bounds != (1.0, 1.0) or self.horizontal_flip or self.vertical_flip
                    or self.brightness_range)

    def replace(self, /, **changes) -> "Recipe":  # `/`: a field called "self" is an unknown field, not a clash
        """A copy with `changes` applied; None values are ignored, unknown names rejected."""
        changes = {k: v for k, v in changes.items() if v is not None}
        known = [f.name for f in fields(self)]
        for key in changes:
            if key not in known:
                raise unknown_name("recipe field", key, known)
        return dataclasses.replace(self, **{k: coerce(self, k, v) for k, v in changes.items()})

    def to_toml(self) -> str:
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if (self.backbone or self.layers) and self.model == Recipe.model:
            del values["model"]  # unused beside a backbone or layers; the default would only mislead a reader
        return tomli_w.dumps(values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    @classmethod
    def from_toml(cls, text: str, where: str = "recipe") -> "Recipe":
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SmallvisionError(f"{where}: not valid TOML: {err}") from None
        try:
            return Recipe().replace(**values) if values else Recipe()
        except SmallvisionError as err:  # a wrong field or value: say which file holds it
            raise SmallvisionError(f"{where}: {err}") from None

    def one_line(self) -> str:
        schedule = "" if self.schedule == "constant" else f" {self.schedule}"
        steps = f" x {self.steps_per_epoch} steps" if self.steps_per_epoch else ""
        size = f" at {self.image_size}px" if self.image_size else ""
        augment = ", augmented" if self.augments else ""
        network = self.model if self.layers is None else f"{len(self.layers)} layers of its own"
        if self.backbone:
            tuned = (f", then its last {self.fine_tune_blocks} blocks {self.fine_tune_epochs} epochs at "
                     f"{self.fine_tune_learning_rate:g}") if self.fine_tune_blocks else ""
            network = f"{self.backbone} (pretrained, frozen{tuned})"
        return (f"{network}{size}, {self.optimizer} lr {self.learning_rate:g}{schedule}, batch {self.batch_size}, "
                f"{self.epochs} epochs{steps}{augment}, {self.precision}")


def written_layers(text: str | list[str]) -> list[str]:
    """A recipe's layers, checked (an unknown layer or argument is an error now, not after the data has
    loaded) and in their written form, one layer per string."""
    from smallvision.models.layer_text import layers_source, parse_layers  # torch and the layers: only when used

    return layers_source(parse_layers(text, "recipe field layers"))


def coerce(recipe: Recipe, key: str, value):
    """`value` as the field's type (TOML and the CLI give ints for floats, strings for paths)."""
    declared = {f.name: f.type for f in fields(recipe)}[key]
    wanted = [t for t in typing.get_args(declared) if t is not type(None)] or [declared]
    if isinstance(declared, types.UnionType) and value is None:
        return None
    problem = SmallvisionError(f"recipe field {key!r} must be {' or '.join(map(type_name, wanted))}, got {value!r}")
    for target in wanted:
        if typing.get_origin(target) is list:
            if isinstance(value, list):
                return [coerce_scalar(typing.get_args(target)[0], item, problem) for item in value]
            continue
        if not isinstance(value, list):
            return coerce_scalar(target, value, problem)
    raise problem


def coerce_scalar(target: type, value, problem: Exception):
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, target) or (target is not bool and isinstance(value, bool)):
        raise problem
    return value


def type_name(kind) -> str:
    return "a list" if typing.get_origin(kind) is list else kind.__name__


def builtin_recipes() -> dict[str, Recipe]:
    folder = resources.files("smallvision") / "recipes"
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            found[entry.name[:-5]] = Recipe.from_toml(entry.read_text(encoding="utf-8"), f"built-in recipe {entry.name}")
    return found


def load_recipe(name_or_path: str | Path | Recipe) -> Recipe:
    """A built-in recipe by name, or a TOML file."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise SmallvisionError(f"recipe file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise SmallvisionError(f"recipe file {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except OSError as err:
            raise SmallvisionError(f"recipe file {path}: cannot read ({err.strerror or err})") from None
        return Recipe.from_toml(text, str(path))
    known = builtin_recipes()
    if text not in known:
        raise unknown_name("recipe", text, list(known))
    return known[text]
