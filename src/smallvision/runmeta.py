"""A run's model.json as one typed value: `RunMeta`, what every reader and writer of the file uses.

    meta = RunMeta.read(run_directory / "model.json")   # checked here, once: one line naming the field and the file
    meta.architecture.input_shape, meta.preprocessing.rescale, meta.class_names, meta.written_by
    meta.write(run_directory / "model.json")            # atomically

Reading checks every field's presence and kind, so that a damaged, hand-edited or truncated file fails as it
loads, with the field and the file named, and never later inside a prediction. Runs written before this module
existed still read: their model.json has no `written_by` (read as UNRECORDED), and the fields added while
0.1.0 was being written (`architecture.backbone`, `dropout`, `layers`, `test_time_flip`, `precision_reason`,
`imported_from.left_out`) take the values those runs meant. `temperature` (calibration) and `unknown` (an
out-of-distribution scorer's parameters) are slots for what comes next: None, and then absent from the file.

Plain dataclasses and json: no PyTorch here, so the ONNX side (`onnx_model.py`, `serve` of an `.onnx` file)
may read it too.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from smallvision import __version__
from smallvision.errors import SmallvisionError
from smallvision.files import write_atomically

FORMAT = "smallvision-run/1"
UNRECORDED = "0.1.0 or earlier"  # written_by of a model.json that does not say (every one before RunMeta)
MAX_SIDE = 8192  # an input_shape beyond this is damage, not a network to build
PRECISIONS = ("bf16", "fp32")  # what the weights were trained in; never "auto"
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid")
COLOR_MODES = ("L", "RGB")


class Problem(Exception):
    """What is wrong with one field; `RunMeta.from_json` turns it into the one line naming the file."""


@dataclass(frozen=True)
class Architecture:
    model: str  # a name of ours ("custom" for a layer list), the Keras model's, or the backbone's
    input_shape: tuple[int, int, int]  # [channels, height, width]
    num_classes: int
    backbone: str | None = None  # a pretrained timm network's name; None for a layer list
    dropout: float = 0.0  # the backbone head's Dropout (a layer list keeps its own among its layers)
    layers: list[dict] | None = None  # the layer list as layer_text's JSON; None for a backbone (or a run from before)

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(self.input_shape))

    def to_json(self) -> dict:
        data = {"model": self.model, "backbone": self.backbone, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "dropout": self.dropout}
        if self.layers is not None:
            data["layers"] = self.layers
        return data

    @classmethod
    def from_json(cls, data: dict, num_classes: int) -> "Architecture":
        fields = Fields(data, "architecture")
        model = fields.need("model", is_text, "a name")
        shape = fields.need("input_shape", is_shape, "[channels, height, width]")
        if shape[0] not in (1, 3) or max(shape[1:]) > MAX_SIDE:
            raise Problem(f"architecture.input_shape must be 1 or 3 channels and at most {MAX_SIDE} pixels a side, "
                          f"got {short(shape)}")
        classes = fields.need("num_classes", whole, "a whole number")
        if classes != num_classes:
            raise Problem(f"architecture.num_classes must be the number of class_names ({num_classes}), got "
                          f"{short(classes)}")
        layers = fields.get("layers", None, is_layer_list, "a list of {\"class_name\", \"config\"} objects")
        return cls(model=model, input_shape=tuple(shape), num_classes=classes,
                   backbone=fields.get("backbone", None, is_optional_text, "a name or null"),
                   dropout=fields.get("dropout", 0.0, is_rate, "a number in [0, 1)"), layers=layers)


@dataclass(frozen=True)
class Preprocessing:
    """What happens to an image before the network: decoded as `color_mode`, resized (`resize` says how),
    digits on a light background inverted and framed as MNIST's; then x * rescale, (x - mean) / std, in
    channels_last memory order."""

    rescale: float
    mean: float | list[float] | None  # one number or one per channel; both or neither with std
    std: float | list[float] | None
    channels_last: bool
    resize: str
    color_mode: str  # "L" (one channel) or "RGB"
    invert_light_background: bool

    def to_json(self) -> dict:
        return {"rescale": self.rescale, "mean": self.mean, "std": self.std, "channels_last": self.channels_last,
                "resize": self.resize, "color_mode": self.color_mode,
                "invert_light_background": self.invert_light_background}

    @classmethod
    def from_json(cls, data: dict, channels: int) -> "Preprocessing":
        fields = Fields(data, "preprocessing")
        rescale = fields.need("rescale", finite, "a number")
        mean, std = fields.need("mean", lambda _: True, ""), fields.need("std", lambda _: True, "")
        if (mean is None) != (std is None):
            raise Problem("preprocessing needs both mean and std, or neither")
        for key, value in (("mean", mean), ("std", std)):
            values = value if isinstance(value, list) else [value]
            if value is not None and not (len(values) in (1, channels) and all(map(finite, values))
                                          and (key == "mean" or 0 not in values)):
                raise Problem(f"preprocessing.{key} must be a number or one per channel"
                              f"{' (not 0)' if key == 'std' else ''}, got {short(value)}")
        channels_last = fields.need("channels_last", is_bool, "true or false")
        resize = fields.need("resize", is_text, "how images were resized, as text")
        color_mode = fields.need("color_mode", lambda value: value in COLOR_MODES, "\"L\" or \"RGB\"")
        if color_mode != ("L" if channels == 1 else "RGB"):
            raise Problem(f"preprocessing.color_mode must be {'L' if channels == 1 else 'RGB'} for "
                          f"{channels}-channel images, got {short(color_mode)}")
        return cls(rescale=rescale, mean=mean, std=std, channels_last=channels_last, resize=resize,
                   color_mode=color_mode,
                   invert_light_background=fields.need("invert_light_background", is_bool, "true or false"))


@dataclass(frozen=True)
class ImportedFrom:
    """Where an imported network came from (`import-keras`)."""

    file: str
    written_by: str  # the Keras that saved it, e.g. "Keras 3.15.1"
    left_out: list[str] = field(default_factory=list)  # the layers left out (augmentation), with their kinds
    source: str | None = None  # the labelled source `import-keras --source` named: what `evaluate RUN` scores on

    def to_json(self) -> dict:
        data = {"file": self.file, "written_by": self.written_by, "left_out": self.left_out}
        if self.source is not None:
            data["source"] = self.source
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ImportedFrom":
        fields = Fields(data, "imported_from")
        return cls(file=fields.need("file", is_text, "a path"),
                   written_by=fields.need("written_by", is_text, "a name and version"),
                   left_out=fields.get("left_out", [], is_text_list, "a list of names"),
                   source=fields.get("source", None, is_text, "a path or a name"))


@dataclass(frozen=True)
class RunMeta:
    """model.json: how to rebuild a run's network and feed it, and where it came from."""

    architecture: Architecture
    class_names: list[str]
    preprocessing: Preprocessing
    source: str  # the source it was trained on, as given ("keras:FILE" for an imported network)
    output_activation: str  # "softmax" or "sigmoid" (one unit, two classes)
    precision: str  # what the weights were trained in: "bf16" or "fp32" (inference follows the machine)
    precision_reason: str | None = None  # why that precision (None in runs from before it was recorded)
    test_time_flip: bool = False  # scored as the mean with the mirrored image
    imported_from: ImportedFrom | None = None
    temperature: float | None = None  # calibration's: logits / temperature before the output activation
    unknown: dict | None = None  # an out-of-distribution scorer's parameters
    format: str = FORMAT
    written_by: str = __version__  # the smallvision that wrote the file; UNRECORDED in runs from before

    def to_json(self) -> dict:
        data = {"format": self.format, "written_by": self.written_by, "source": self.source,
                "architecture": self.architecture.to_json(), "class_names": list(self.class_names),
                "output_activation": self.output_activation, "precision": self.precision,
                "precision_reason": self.precision_reason, "test_time_flip": self.test_time_flip,
                "preprocessing": self.preprocessing.to_json()}
        if self.imported_from is not None:
            data["imported_from"] = self.imported_from.to_json()
        if self.temperature is not None:
            data["temperature"] = self.temperature
        if self.unknown is not None:
            data["unknown"] = self.unknown
        return data

    @classmethod
    def from_json(cls, data, where: str | Path = "model.json") -> "RunMeta":
        """model.json's parsed JSON as a RunMeta, every field checked; a SmallvisionError of one line naming
        `where` (the file) and the first field that is missing or of the wrong kind otherwise."""
        try:
            return cls.checked(data)
        except Problem as problem:
            raise SmallvisionError(f"{where}: not a run's model description ({one_line(problem)})") from None
        except Newer as newer:
            raise SmallvisionError(f"{where}: {one_line(newer)}") from None

    @classmethod
    def checked(cls, data) -> "RunMeta":
        if not isinstance(data, dict):
            raise Problem(f"a JSON {json_kind(data)}, not an object")
        fields = Fields(data)
        written_by = fields.get("written_by", UNRECORDED, is_text, "a version")
        form = fields.need("format", is_text, f"{FORMAT!r}")
        if form != FORMAT:
            if form.startswith("smallvision-run/"):
                raise Newer(f"written by smallvision {written_by[:40]} as {form[:40]!r}; this smallvision "
                            f"({__version__}) reads {FORMAT!r}: use a newer one")
            raise Problem(f"format must be {FORMAT!r}, got {short(form)}")
        names = fields.need("class_names", is_text_list, "a list of names")
        if not names:
            raise Problem("class_names must be a list of names, got []")
        architecture = Architecture.from_json(fields.need("architecture", is_object, "a JSON object"), len(names))
        preprocessing = Preprocessing.from_json(fields.need("preprocessing", is_object, "a JSON object"),
                                                architecture.input_shape[0])
        imported = fields.get("imported_from", None, lambda value: value is None or is_object(value),
                              "a JSON object or null")
        return cls(architecture=architecture, class_names=names, preprocessing=preprocessing,
                   source=fields.need("source", is_text, "the source's name or path"),
                   output_activation=fields.need("output_activation", lambda value: value in OUTPUT_ACTIVATIONS,
                                                 " or ".join(map(repr, OUTPUT_ACTIVATIONS))),
                   precision=fields.need("precision", lambda value: value in PRECISIONS,
                                         " or ".join(map(repr, PRECISIONS))),
                   precision_reason=fields.get("precision_reason", None, is_optional_text, "text or null"),
                   test_time_flip=fields.get("test_time_flip", False, is_bool, "true or false"),
                   imported_from=ImportedFrom.from_json(imported) if imported is not None else None,
                   temperature=fields.get("temperature", None, lambda value: value is None or positive(value),
                                          "a positive number or null"),
                   unknown=fields.get("unknown", None, lambda value: value is None or is_object(value),
                                      "a JSON object or null"),
                   format=form, written_by=written_by)

    @classmethod
    def read(cls, path: str | Path) -> "RunMeta":
        """A run's model.json, read and checked (`from_json`); one line naming the file when it cannot be."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise SmallvisionError(f"{path}: unreadable ({one_line(err)})") from None
        return cls.from_json(data, path)

    def write(self, path: str | Path) -> None:
        """model.json, written atomically (files.write_atomically): a crash leaves the old file or the new one."""
        text = json.dumps(self.to_json(), indent=2)
        write_atomically(Path(path), lambda temporary: temporary.write_text(text, encoding="utf-8"))

    def replace(self, **changes) -> "RunMeta":
        return dataclasses.replace(self, **changes)


class Newer(Exception):
    """A model.json in a later format than this smallvision reads."""


class Fields:
    """One JSON object's fields, each taken once and checked; a Problem names the field by its dotted path."""

    def __init__(self, data: dict, prefix: str = ""):
        self.data, self.prefix = data, prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def need(self, key: str, check, expected: str):
        if key not in self.data:
            raise Problem(f"no {self.name(key)!r} field")
        return self.checked(key, check, expected)

    def get(self, key: str, default, check, expected: str):
        """An optional field (one that runs from before it existed lack): `default` when absent."""
        if key not in self.data:
            return default
        return self.checked(key, check, expected)

    def checked(self, key: str, check, expected: str):
        value = self.data[key]
        if not check(value):
            raise Problem(f"{self.name(key)} must be {expected}, got {short(value)}")
        return value


def is_text(value) -> bool:
    return isinstance(value, str)


def is_optional_text(value) -> bool:
    return value is None or isinstance(value, str)


def is_bool(value) -> bool:
    return isinstance(value, bool)


def is_object(value) -> bool:
    return isinstance(value, dict)


def is_text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def is_shape(value) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(whole(side) and side >= 1 for side in value)


def is_layer_list(value) -> bool:
    """layer_text's JSON form, as far as its shape: each entry's arguments are checked as the network is built."""
    return value is None or (isinstance(value, list) and all(
        isinstance(entry, dict) and isinstance(entry.get("class_name"), str) and isinstance(entry.get("config"), dict)
        for entry in value))


def is_rate(value) -> bool:
    return finite(value) and 0 <= value < 1


def whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def finite(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond any float
        return False


def positive(value) -> bool:
    return finite(value) and value > 0


def json_kind(value) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def short(value) -> str:
    """A value from the file as at most 60 characters of JSON, on one line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
