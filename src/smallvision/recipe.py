"""A recipe: every choice a run makes, read from and written to TOML."""

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

import tomli_w

from smallvision.errors import SmallvisionError, unknown_name

CHOICES = {
    "optimizer": ("rmsprop", "adam", "adamw", "sgd"),
    "schedule": ("constant", "onecycle", "cosine"),
    "loss": ("categorical_crossentropy",),
    "precision": ("fp32", "bf16"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    # the network, by name (see `smallvision summary`)
    model: str = "mnist_convnet"
    # data: a fraction of train carved out for validation (stratified, seeded); 0 means none
    val_split: float = 0.0
    # preprocessing: pixel * rescale, then (x - mean) / std when both are given
    rescale: float = 1 / 255
    mean: float | None = None
    std: float | None = None
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
    steps_per_epoch: int | None = None
    # bf16 runs matrix work in bfloat16 with float32 weights (autocast)
    precision: str = "bf16"
    channels_last: bool = True
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for field, allowed in CHOICES.items():
            if getattr(self, field) not in allowed:
                raise unknown_name(field, str(getattr(self, field)), list(allowed))
        for field in ("epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise SmallvisionError(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise SmallvisionError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if self.learning_rate <= 0:
            raise SmallvisionError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.val_split < 1.0:
            raise SmallvisionError(f"val_split must be in [0, 1), got {self.val_split}")
        if not 0.0 <= self.warmup < 1.0:
            raise SmallvisionError(f"warmup must be in [0, 1), got {self.warmup}")
        if (self.mean is None) != (self.std is None):
            raise SmallvisionError("give both mean and std, or neither")

    def replace(self, **changes) -> "Recipe":
        """A copy with `changes` applied; None values are ignored, unknown names rejected."""
        changes = {k: v for k, v in changes.items() if v is not None}
        known = [f.name for f in fields(self)]
        for key in changes:
            if key not in known:
                raise unknown_name("recipe field", key, known)
        return dataclasses.replace(self, **{k: coerce(self, k, v) for k, v in changes.items()})

    def to_toml(self) -> str:
        return tomli_w.dumps({k: v for k, v in dataclasses.asdict(self).items() if v is not None})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    @classmethod
    def from_toml(cls, text: str, where: str = "recipe") -> "Recipe":
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SmallvisionError(f"{where}: not valid TOML: {err}") from None
        return Recipe().replace(**values) if values else Recipe()

    def one_line(self) -> str:
        schedule = "" if self.schedule == "constant" else f" {self.schedule}"
        steps = f" x {self.steps_per_epoch} steps" if self.steps_per_epoch else ""
        return (f"{self.model}, {self.optimizer} lr {self.learning_rate:g}{schedule}, batch {self.batch_size}, "
                f"{self.epochs} epochs{steps}, {self.precision}")


def coerce(recipe: Recipe, key: str, value):
    """`value` as the field's type (TOML and the CLI give ints for floats, strings for paths)."""
    declared = {f.name: f.type for f in fields(recipe)}[key]
    wanted = [t for t in typing.get_args(declared) if t is not type(None)] or [declared]
    if isinstance(declared, types.UnionType) and value is None:
        return None
    target = wanted[0]
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, target) or (target is int and isinstance(value, bool)):
        raise SmallvisionError(f"recipe field {key!r} must be {target.__name__}, got {value!r}")
    return value


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
        return Recipe.from_toml(path.read_text(encoding="utf-8"), str(path))
    known = builtin_recipes()
    if text not in known:
        raise unknown_name("recipe", text, list(known))
    return known[text]
