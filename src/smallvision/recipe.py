"""A recipe: every choice a run makes, grouped by what it governs, read from and written to TOML.

A recipe is its name and description and eight groups, each a frozen dataclass that checks its own fields
as it is made: `Network`, `Data`, `Augment`, `Preprocess`, `Optimizer`, `Schedule`, `FineTune` and
`RunSettings`; `Recipe` checks what involves two of them. In TOML each group is a table:

    name = "mine"

    [optimizer]
    name = "adamw"
    learning_rate = 0.003

Every field also keeps the flat name it had before the groups (FLAT: `rotation_range` is
`augment.rotation_range`, `optimizer` is `optimizer.name`), so the recipe files of earlier releases (every
older run directory's recipe.toml), `--set rotation_range=20` and `sv.train(..., epochs=3)` mean what they
meant. `Recipe.replace` takes flat names, dotted ones and whole groups.

No PyTorch is imported here (the CLI reads recipes before it imports anything heavy): `Preprocess` imports
it when it is first applied to pixels, and augment.py does the augmentation's tensor work.
"""

import dataclasses
import functools
import math
import tomllib
import types
import typing
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import ClassVar

import tomli_w

from smallvision.errors import SmallvisionError, unknown_name

PRECISIONS = ("auto", "bf16", "fp32")  # precision.py says what "auto" becomes

CHOICES = {  # by the name the error message gives the field
    "optimizer": ("rmsprop", "adam", "adamw", "sgd"),
    "schedule": ("constant", "onecycle", "cosine"),
    "loss": ("categorical_crossentropy", "binary_crossentropy"),
    "fill_mode": ("nearest", "reflect", "wrap", "constant"),
    "precision": PRECISIONS,
    "device": ("auto", "cpu", "cuda"),
    "compile": ("off", "default", "reduce-overhead", "max-autotune"),
    "color_mode": ("rgb", "grayscale"),
    "keep_best": ("val_accuracy", "val_loss"),
    "class_weight": ("auto", "balanced", "none"),
}


@dataclass(frozen=True)
class Group:
    """What every group does as it is made: each field as its declared type (a caller's int for a float,
    tuple for a list), then the group's own checks. Groups are frozen: a recipe's copies share them."""

    TABLE: ClassVar[str] = ""  # the group's table in TOML and its field in Recipe

    def __post_init__(self):
        for field in fields(self):
            object.__setattr__(self, field.name, coerce(self.path(field.name), field.type, getattr(self, field.name)))
        self.validate()

    def validate(self) -> None:
        """The group's own checks (Recipe checks what involves two groups)."""

    def path(self, name: str) -> str:
        return f"{self.TABLE}.{name}"

    def check_choice(self, name: str, kind: str) -> None:
        value = getattr(self, name)
        if value not in CHOICES[kind]:
            raise unknown_name(kind, str(value), list(CHOICES[kind]))

    def check_range(self, names: tuple[str, ...], high: float = 1.0) -> None:
        """0 <= value < high for each field named (a fraction, unless `high` is infinite)."""
        for name in names:
            value = getattr(self, name)
            if not 0.0 <= value < high:
                wording = "be 0 or more" if high == math.inf else f"be in [0, {high:g})"
                raise SmallvisionError(f"{self.path(name)} must {wording}, got {value}")

    def check_positive(self, names: tuple[str, ...]) -> None:
        for name in names:
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise SmallvisionError(f"{self.path(name)} must be a positive number, got {value}")


@dataclass(frozen=True)
class Network(Group):
    TABLE: ClassVar[str] = "network"

    # the network, by name (see `smallvision summary`), and its Dropout rate where it has one
    model: str = "mnist_convnet"
    # or the network written as layers in Keras' words, one string per layer (or all in one string), e.g.
    # ["Conv2D(32, 3, activation='relu')", "MaxPooling2D(2)", "Flatten()", "Dense(10, activation='softmax')"];
    # it replaces model, and any Dropout is written among the layers
    layers: str | list[str] | None = None
    # a pretrained timm network to build on instead (frozen, with a new Dropout + Dense head); its own
    # input size, mean and std are used unless data.image_size and preprocess.mean and std are given
    backbone: str | None = None
    dropout: float = 0.0

    def validate(self) -> None:
        if self.layers is not None:
            object.__setattr__(self, "layers", written_layers(self.layers))
            if self.backbone:
                raise SmallvisionError("give a network as layers or a pretrained backbone, not both")
            if self.dropout:
                raise SmallvisionError("with layers, write the Dropout among them (Dropout(0.5)); leave dropout at 0")
        self.check_range(("dropout",))

    def describe(self) -> str:
        return self.backbone or (self.model if self.layers is None else f"{len(self.layers)} layers of its own")


@dataclass(frozen=True)
class Data(Group):
    TABLE: ClassVar[str] = "data"

    # image folders are decoded to image_size x image_size, in color_mode "rgb" or "grayscale"
    # (unset: the model's own input size and channels)
    image_size: int | None = None
    color_mode: str | None = None
    # fractions held out, stratified and seeded, when the source has no such split; 0 means none
    val_split: float = 0.0
    test_split: float = 0.0
    # the most the training data may take in memory (or GPU memory, where it would sit on the GPU), e.g.
    # "1GB"; auto: half of what is available. A bigger folder trains from the memory-mapped decode cache
    memory_budget: str = "auto"

    def validate(self) -> None:
        if self.color_mode is not None:
            self.check_choice("color_mode", "color_mode")
        if self.image_size is not None and self.image_size < 8:
            raise SmallvisionError(f"data.image_size must be at least 8 pixels, got {self.image_size}")
        self.check_range(("val_split", "test_split"))
        if self.val_split + self.test_split >= 1.0:
            raise SmallvisionError("data.val_split + data.test_split must leave some images to train on")
        if self.memory_budget != "auto":
            from smallvision.data.cache import parse_size

            parse_size(self.memory_budget)


@dataclass(frozen=True)
class Augment(Group):
    """Augmentation of training images, with ImageDataGenerator's names and meaning: degrees for rotation
    and shear; shifts as a fraction of the size (below 1) or pixels; zoom z is [1 - z, 1 + z] or a
    [low, high] pair; brightness a [low, high] factor; fill_mode for the border that comes into view:
    nearest, reflect, wrap or constant (with cval). augment.py applies it to a batch."""

    TABLE: ClassVar[str] = "augment"

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

    def validate(self) -> None:
        for name in ("rotation_range", "width_shift_range", "height_shift_range", "shear_range", "cval"):
            if getattr(self, name) < 0:
                raise SmallvisionError(f"augment.{name} must not be negative, got {getattr(self, name)}")
        low, high = self.zoom_bounds
        if not 0 < low <= high:
            raise SmallvisionError(f"augment.zoom_range must be a float in [0, 1) or a [low, high] pair with "
                                   f"0 < low <= high, got {self.zoom_range}")
        if self.brightness_range is not None and (len(self.brightness_range) != 2
                                                  or not 0 <= self.brightness_range[0] <= self.brightness_range[1]):
            raise SmallvisionError(f"augment.brightness_range must be a [low, high] pair with 0 <= low <= high, "
                                   f"got {self.brightness_range}")
        self.check_choice("fill_mode", "fill_mode")

    @property
    def zoom_bounds(self) -> tuple[float, float]:
        """Keras' reading of zoom_range: a float z is [1 - z, 1 + z]; a pair is itself."""
        if isinstance(self.zoom_range, list):
            return (self.zoom_range[0], self.zoom_range[1]) if len(self.zoom_range) == 2 else (0.0, -1.0)
        return 1.0 - self.zoom_range, 1.0 + self.zoom_range

    @property
    def moves_pixels(self) -> bool:
        """Whether any geometric transform is asked for: decided from the settings, once, rather than by
        comparing each batch's maps with the identity (a host sync on every step)."""
        return bool(self.rotation_range or self.width_shift_range or self.height_shift_range or self.shear_range
                    or self.zoom_bounds != (1.0, 1.0) or self.horizontal_flip or self.vertical_flip)

    @property
    def active(self) -> bool:
        """Whether training images are transformed at all."""
        return self.moves_pixels or bool(self.brightness_range)

    def describe(self) -> str:
        """What it does, in a few words (`augment preview`'s title)."""
        parts = []
        if self.rotation_range:
            parts.append(f"rotation {self.rotation_range:g}°")
        if self.width_shift_range or self.height_shift_range:
            parts.append(f"shift {self.width_shift_range:g}/{self.height_shift_range:g}")
        if self.shear_range:
            parts.append(f"shear {self.shear_range:g}°")
        if self.zoom_bounds != (1.0, 1.0):
            parts.append(f"zoom {self.zoom_bounds[0]:g}-{self.zoom_bounds[1]:g}")
        if self.horizontal_flip:
            parts.append("h-flip")
        if self.vertical_flip:
            parts.append("v-flip")
        if self.brightness_range:
            parts.append(f"brightness {self.brightness_range[0]:g}-{self.brightness_range[1]:g}")
        return ", ".join(parts) + f", fill {self.fill_mode}"


@dataclass(frozen=True)
class Preprocess(Group):
    """uint8 pixels -> float model input: x * rescale, then (x - mean) / std when both are given (one value,
    or one per channel), in channels_last memory order (which the model is put in too)."""

    TABLE: ClassVar[str] = "preprocess"

    rescale: float = 1 / 255
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    channels_last: bool = True

    def validate(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise SmallvisionError("give both preprocess.mean and preprocess.std, or neither")

    def __call__(self, pixels):
        """The model's input for uint8 (or float) pixels [N, C, H, W]. Every training step calls it."""
        import torch  # here, not at the top: once imported this is a dictionary lookup

        x = pixels.float() * self.rescale  # not in place: inspection passes float pixels that need gradients
        if self.mean is not None:
            x = x.sub_(per_channel(self.mean, x)).div_(per_channel(self.std, x))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def per_channel(value: float | list[float], x):
    return channel_tensor(tuple(value), x.device) if isinstance(value, list) else value


@functools.lru_cache(maxsize=16)
def channel_tensor(values: tuple[float, ...], device):
    """Per-channel constants [1, C, 1, 1] on `device`, made once: a new device tensor every step is a
    host-to-device copy in the hot loop."""
    import torch

    return torch.tensor(values, device=device).view(1, -1, 1, 1)


@dataclass(frozen=True)
class Optimizer(Group):
    """Optimisation, with Keras' names and defaults; the loss, and the batch each step sees."""

    TABLE: ClassVar[str] = "optimizer"

    name: str = "rmsprop"
    learning_rate: float = 1e-3
    rho: float = 0.9
    momentum: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    weight_decay: float = 0.0
    loss: str = "categorical_crossentropy"
    label_smoothing: float = 0.0
    batch_size: int = 64
    # Keras' class_weight: each training image's loss times its class's weight (the batch's mean of those,
    # as Keras reduces). "balanced": images / (classes x the class's images), so every class weighs the same
    # in total; a table {class name: weight}; "none"; "auto" (the default): balanced when the largest training
    # class has at least twice the images of the smallest (balance.py), none otherwise. Validation and test
    # losses are never weighted, as in Keras
    class_weight: str | dict[str, float] = "auto"

    def validate(self) -> None:
        if isinstance(self.class_weight, dict):
            for name, weight in self.class_weight.items():
                if not 0 <= weight < math.inf:
                    raise SmallvisionError(f"optimizer.class_weight: the weight of {name!r} must be a number, 0 or "
                                           f"more, got {weight}")
            if not any(self.class_weight.values()):
                raise SmallvisionError("optimizer.class_weight: give at least one class a weight above 0")
        else:
            self.check_choice("class_weight", "class_weight")
        self.check_choice("name", "optimizer")
        self.check_choice("loss", "loss")
        self.check_positive(("learning_rate", "epsilon"))
        self.check_range(("rho", "beta_1", "beta_2", "momentum", "label_smoothing"))
        self.check_range(("weight_decay",), high=math.inf)
        if self.batch_size < 1:
            raise SmallvisionError(f"optimizer.batch_size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class Schedule(Group):
    """How long training runs and how its learning rate moves: over all steps, warmup a fraction of them
    (onecycle); steps_per_epoch batches an epoch, drawn cycling through the shuffled training set as Keras'
    fit (0: one pass); validation every validation_freq epochs (and after the last), as Keras' fit."""

    TABLE: ClassVar[str] = "schedule"

    name: str = "constant"
    warmup: float = 0.0
    epochs: int = 5
    steps_per_epoch: int = 0
    validation_freq: int = 1

    def validate(self) -> None:
        self.check_choice("name", "schedule")
        self.check_range(("warmup",))
        for name in ("epochs", "validation_freq"):
            if getattr(self, name) < 1:
                raise SmallvisionError(f"schedule.{name} must be at least 1, got {getattr(self, name)}")
        if self.steps_per_epoch < 0:
            raise SmallvisionError(f"schedule.steps_per_epoch must be 0 (one pass) or more, got {self.steps_per_epoch}")


@dataclass(frozen=True)
class FineTune(Group):
    """A second stage after the head has trained on the frozen backbone: the backbone's last `blocks` blocks
    (and its final convolution) train too, for `epochs` at `learning_rate`."""

    TABLE: ClassVar[str] = "fine_tune"

    blocks: int = 0
    epochs: int = 0
    learning_rate: float = 1e-5

    def validate(self) -> None:
        if self.blocks < 0 or self.epochs < 0:
            raise SmallvisionError("fine_tune.blocks and fine_tune.epochs must not be negative")
        self.check_positive(("learning_rate",))


@dataclass(frozen=True)
class RunSettings(Group):
    """How the run goes about it: the seed, the device and number format, compiling, checkpoints, keeping the
    best weights, and scoring."""

    TABLE: ClassVar[str] = "run"

    seed: int = 0
    device: str = "auto"
    # bf16 runs matrix work in bfloat16 with float32 weights (autocast); auto: bf16 where the training
    # device computes it natively, fp32 elsewhere (precision.py; the run records what it chose and why)
    precision: str = "auto"
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
    # score each validation and test image as the mean of it and its mirror image
    test_time_flip: bool = False
    # the share of validation images the run's "none of these" line calls unknown (unknown.py): the line is
    # the score that accepts the rest
    unknown_rate: float = 0.05

    def validate(self) -> None:
        for name in ("device", "precision", "compile"):
            self.check_choice(name, name)
        if self.checkpoint_minutes <= 0:
            raise SmallvisionError(f"run.checkpoint_minutes must be positive, got {self.checkpoint_minutes}")
        if self.keep_best is not None:
            self.check_choice("keep_best", "keep_best")
        if self.early_stopping_patience < 0:
            raise SmallvisionError(f"run.early_stopping_patience must be 0 (never stop early) or more, "
                                   f"got {self.early_stopping_patience}")
        if not 0 < self.unknown_rate < 1:
            raise SmallvisionError(f"run.unknown_rate is the share of validation images to call unknown, between 0 "
                                   f"and 1 (0.05: 5%), got {self.unknown_rate}")
        if self.early_stopping_patience and not self.keep_best:
            # Keras' EarlyStopping watches val_loss unless told otherwise
            object.__setattr__(self, "keep_best", "val_loss")


GROUPS: dict[str, type[Group]] = {group.TABLE: group for group in
                                  (Network, Data, Augment, Preprocess, Optimizer, Schedule, FineTune, RunSettings)}
TOP = ("name", "description")  # the recipe's own fields, beside its groups

# Every field's flat name (its name before the groups, and in every earlier release's recipe files) and its
# place. Reading a flat file, a flat --set and sv.train's keyword overrides go through this table.
FLAT = {
    "model": "network.model", "layers": "network.layers", "backbone": "network.backbone",
    "dropout": "network.dropout",
    "image_size": "data.image_size", "color_mode": "data.color_mode", "val_split": "data.val_split",
    "test_split": "data.test_split", "memory_budget": "data.memory_budget",
    "rotation_range": "augment.rotation_range", "width_shift_range": "augment.width_shift_range",
    "height_shift_range": "augment.height_shift_range", "shear_range": "augment.shear_range",
    "zoom_range": "augment.zoom_range", "horizontal_flip": "augment.horizontal_flip",
    "vertical_flip": "augment.vertical_flip", "brightness_range": "augment.brightness_range",
    "fill_mode": "augment.fill_mode", "cval": "augment.cval",
    "rescale": "preprocess.rescale", "mean": "preprocess.mean", "std": "preprocess.std",
    "channels_last": "preprocess.channels_last",
    "optimizer": "optimizer.name", "learning_rate": "optimizer.learning_rate", "rho": "optimizer.rho",
    "momentum": "optimizer.momentum", "beta_1": "optimizer.beta_1", "beta_2": "optimizer.beta_2",
    "epsilon": "optimizer.epsilon", "weight_decay": "optimizer.weight_decay", "loss": "optimizer.loss",
    "label_smoothing": "optimizer.label_smoothing", "batch_size": "optimizer.batch_size",
    "class_weight": "optimizer.class_weight",
    "schedule": "schedule.name", "warmup": "schedule.warmup", "epochs": "schedule.epochs",
    "steps_per_epoch": "schedule.steps_per_epoch", "validation_freq": "schedule.validation_freq",
    "fine_tune_blocks": "fine_tune.blocks", "fine_tune_epochs": "fine_tune.epochs",
    "fine_tune_learning_rate": "fine_tune.learning_rate",
    "seed": "run.seed", "device": "run.device", "precision": "run.precision", "compile": "run.compile",
    "checkpoint_minutes": "run.checkpoint_minutes", "keep_best": "run.keep_best",
    "early_stopping_patience": "run.early_stopping_patience", "test_time_flip": "run.test_time_flip",
    "unknown_rate": "run.unknown_rate",
}
FIELD_TYPES = {f"{table}.{field.name}": field.type for table, group in GROUPS.items() for field in fields(group)}
FLAT_NAME = {path: flat for flat, path in FLAT.items()}  # and back


@dataclass(frozen=True)
class Recipe:
    """Every choice of a run. Build one from another with `replace` (flat names, dotted names, groups):
    `Recipe().replace(optimizer="adamw", epochs=3)`, `recipe.replace(**{"augment.rotation_range": 20})`."""

    name: str = "custom"
    description: str = ""
    network: Network = dataclasses.field(default_factory=Network)
    data: Data = dataclasses.field(default_factory=Data)
    augment: Augment = dataclasses.field(default_factory=Augment)
    preprocess: Preprocess = dataclasses.field(default_factory=Preprocess)
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    fine_tune: FineTune = dataclasses.field(default_factory=FineTune)
    run: RunSettings = dataclasses.field(default_factory=RunSettings)

    def __post_init__(self):
        for name in TOP:
            object.__setattr__(self, name, coerce(name, str, getattr(self, name)))
        for table, group in GROUPS.items():
            if not isinstance(getattr(self, table), group):
                raise wrong_group(table, getattr(self, table))
        self.validate()

    def validate(self) -> None:
        """What involves two groups (each group checked its own fields as it was made)."""
        if self.network.backbone and self.data.color_mode == "grayscale":
            raise SmallvisionError("a pretrained backbone takes colour images; leave data.color_mode unset or \"rgb\"")
        if self.fine_tune.blocks and not (self.network.backbone and self.fine_tune.epochs):
            raise SmallvisionError("fine-tuning (fine_tune.blocks) needs a network.backbone and fine_tune.epochs "
                                   "above 0")

    def get(self, name: str):
        """A field by its flat or dotted name (`get("epochs")`, `get("schedule.epochs")`)."""
        if name in TOP:
            return getattr(self, name)
        path = FLAT.get(name, name)
        if path not in FIELD_TYPES:
            raise unknown_name("recipe field", name, KNOWN)
        table, field = path.split(".")
        return getattr(getattr(self, table), field)

    def replace(self, /, **changes) -> "Recipe":  # `/`: a field called "self" is an unknown field, not a clash
        """A copy with `changes` applied: fields by flat name (`epochs=3`) or dotted name
        (`**{"schedule.epochs": 3}`), a group whole (`augment=Augment(...)`) or as a dict of its fields;
        None values are ignored, unknown names rejected (with the nearest ones), and a field given twice
        must be given the same value. A whole group is applied first, fields given with it on top."""
        whole, parts = sort_changes(changes)
        groups = {table: dataclasses.replace(whole.get(table, getattr(self, table)), **part)
                  for table, part in parts.items()}
        return dataclasses.replace(self, **{**whole, **groups})

    def to_toml(self) -> str:
        """The recipe as TOML, a table per group (None, which TOML cannot write, left out: it is the default)."""
        values: dict = {name: getattr(self, name) for name in TOP}
        for table in GROUPS:
            values[table] = {k: v for k, v in dataclasses.asdict(getattr(self, table)).items() if v is not None}
        network = self.network
        if (network.backbone or network.layers) and network.model == Network.model:
            del values["network"]["model"]  # unused beside a backbone or layers; the default would only mislead
        return tomli_w.dumps(values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    @classmethod
    def from_toml(cls, text: str, where: str = "recipe") -> "Recipe":
        """A recipe from TOML with a table per group, or flat (every earlier release's files), or both: a flat
        field beside its group's table is fine when the two agree."""
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SmallvisionError(f"{where}: not valid TOML: {err}") from None
        try:
            return Recipe().replace(**values) if values else Recipe()
        except SmallvisionError as err:  # a wrong field or value: say which file holds it
            raise SmallvisionError(f"{where}: {err}") from None

    def one_line(self) -> str:
        schedule, optimizer, data = self.schedule, self.optimizer, self.data
        name = "" if schedule.name == "constant" else f" {schedule.name}"
        steps = f" x {schedule.steps_per_epoch} steps" if schedule.steps_per_epoch else ""
        size = f" at {data.image_size}px" if data.image_size else ""
        augment = ", augmented" if self.augment.active else ""
        network = self.network.describe()
        if self.network.backbone:
            tune = self.fine_tune
            tuned = (f", then its last {tune.blocks} blocks {tune.epochs} epochs at "
                     f"{tune.learning_rate:g}") if tune.blocks else ""
            network = f"{self.network.backbone} (pretrained, frozen{tuned})"
        return (f"{network}{size}, {optimizer.name} lr {optimizer.learning_rate:g}{name}, batch "
                f"{optimizer.batch_size}, {schedule.epochs} epochs{steps}{augment}, {self.run.precision}")


KNOWN = sorted([*TOP, *FLAT, *FIELD_TYPES])  # what an unknown name is compared with: flat and dotted names


def sort_changes(changes: dict) -> tuple[dict, dict[str, dict]]:
    """`changes` as (top-level fields and whole groups, {table: {field: value}}), each value as its field's
    type. A field named twice (flat and dotted, or flat and in its group's table) must have one value."""
    whole: dict = {}
    parts: dict[str, dict] = {}
    named: dict[str, str] = {}  # a field's path: the name it was first given by

    def put(path: str, value, written: str) -> None:
        value = coerce(written, FIELD_TYPES[path], value)
        table, field = path.split(".")
        part = parts.setdefault(table, {})
        if field in part and part[field] != value:
            raise given_twice(named[path], written, part[field], value)
        part[field] = value
        named.setdefault(path, written)

    for key, value in changes.items():
        if value is None:
            continue
        if key in TOP:
            whole[key] = coerce(key, str, value)
        elif key in GROUPS and isinstance(value, GROUPS[key]):
            whole[key] = value
        elif key in GROUPS and isinstance(value, dict):  # a TOML table
            for field, inner in value.items():
                path = f"{key}.{field}"
                if path not in FIELD_TYPES:
                    raise unknown_name("recipe field", path, KNOWN)
                if inner is not None:
                    put(path, inner, path)
        elif key in FLAT:  # optimizer = "adam" and schedule = "cosine" are flat names, not groups
            put(FLAT[key], value, key)
        elif key in GROUPS:
            raise wrong_group(key, value)
        elif key in FIELD_TYPES:
            put(key, value, key)
        else:
            raise unknown_name("recipe field", key, KNOWN)
    return whole, parts


def flat_names(changes: dict) -> dict:
    """`changes` with every dotted name that has a flat one under its flat name (`schedule.epochs` -> `epochs`),
    for code that looks a change up by its flat name; a field given under both names must have one value."""
    renamed: dict = {}
    written: dict[str, str] = {}
    for key, value in changes.items():
        name = FLAT_NAME.get(key, key)
        if value is None and name in renamed:
            continue
        if renamed.get(name) is not None and renamed[name] != value:
            raise given_twice(written[name], key, renamed[name], value)
        renamed[name], written[name] = value, key
    return renamed


def given_twice(first: str, second: str, value, other) -> SmallvisionError:
    return SmallvisionError(f"recipe fields {first!r} and {second!r} are the same field, given {short(value)} and "
                            f"{short(other)}; give it once")


def wrong_group(table: str, value) -> SmallvisionError:
    return SmallvisionError(f"recipe field {table!r} must be a table of {table} settings ([{table}] in TOML, "
                            f"{GROUPS[table].__name__}(...) in Python), got {short(value)}")


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def written_layers(text: str | list[str]) -> list[str]:
    """A recipe's layers, checked (an unknown layer or argument is an error now, not after the data has
    loaded) and in their written form, one layer per string."""
    from smallvision.models.layer_text import layers_source, parse_layers  # torch and the layers: only when used

    return layers_source(parse_layers(text, "recipe field layers"))


def coerce(name: str, declared, value):
    """`value` as the declared type (TOML and the CLI give ints for floats, strings for paths; a Python caller
    may give a tuple for a list); NaN is refused, since it passes every range check."""
    wanted = ([t for t in typing.get_args(declared) if t is not type(None)]
              if isinstance(declared, types.UnionType) else [declared])
    if isinstance(declared, types.UnionType) and type(None) in typing.get_args(declared) and value is None:
        return None
    problem = SmallvisionError(f"recipe field {name!r} must be {' or '.join(map(type_name, wanted))}, "
                               f"got {short(value)}")
    for target in wanted:
        if typing.get_origin(target) is dict:  # a table {name: value}: string keys, values as declared
            if isinstance(value, dict) and all(isinstance(key, str) for key in value):
                return {key: coerce_scalar(name, typing.get_args(target)[1], item, problem) for key, item in value.items()}
            continue
        if typing.get_origin(target) is list:
            if isinstance(value, (list, tuple)):
                return [coerce_scalar(name, typing.get_args(target)[0], item, problem) for item in value]
            continue
        if not isinstance(value, (list, tuple, dict)):
            return coerce_scalar(name, target, value, problem)
    raise problem


def coerce_scalar(name: str, target: type, value, problem: Exception):
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise problem from None
    if not isinstance(value, target) or (target is not bool and isinstance(value, bool)):
        raise problem
    if isinstance(value, float) and math.isnan(value):
        raise SmallvisionError(f"{name} must be a number, got {value}")
    return value


def type_name(kind) -> str:
    return {list: "a list", dict: "a table"}.get(typing.get_origin(kind)) or kind.__name__


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
