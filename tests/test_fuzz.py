"""Fuzzing the readers of what users hand us: IDX files, image files, recipe TOML, a run's model.json,
safetensors files (a run's weights, a checkpoint), `predict` on files that are not images, and a Keras
file's model config.

Every input, however damaged, must give the module's own answer for bad input (a one-line
SmallvisionError naming the file, or DamagedImage with the reason a file is skipped) and never
another exception or a hang. Hypothesis runs derandomized, without a database, so CI sees the
same examples every time.
"""

import contextlib
import faulthandler
import gzip
import io
import json
import math
import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from smallvision.data.idx import IDX_TYPES, read_idx, write_idx
from smallvision.errors import SmallvisionError
from smallvision.images import DamagedImage, decode_image, load_image
from smallvision.recipe import FIELD_TYPES as PATH_TYPES
from smallvision.recipe import FLAT, GROUPS, Recipe, load_recipe

# Per input kind; SMALLVISION_FUZZ_EXAMPLES=20000 fuzzes for longer (still the same examples every time).
EXAMPLES = int(os.environ.get("SMALLVISION_FUZZ_EXAMPLES", "500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
EXAMPLE_SECONDS = 10  # one example taking longer counts as a hang
# Pillow warns about damaged EXIF (its TIFF tags) and carries on without it, as images.py means it to.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")


class Hang(BaseException):  # not an Exception: no `except Exception` in the code under test may swallow it
    pass


@contextlib.contextmanager
def no_hang(seconds: float = EXAMPLE_SECONDS):
    """Fail an example that runs longer than `seconds` (Python-level loops; C-level ones meet the watchdog)."""
    def expired(signum, frame):
        raise Hang(f"one example ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def watchdog():
    """A hang inside C code (a decoder's loop) cannot be interrupted: dump the stacks and end the process."""
    faulthandler.dump_traceback_later(300 * max(1.0, EXAMPLES / 500), exit=True)  # 500 examples take seconds
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The networks here are tiny: a second PyTorch thread costs more than it gives (on a busy 2-core machine,
    a run loads and scores in 1 ms on one thread and 20 ms on two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def outcome(name: str) -> None:
    """Count how the examples ended (pytest --hypothesis-show-statistics), so that a strategy that never reaches
    the reader's success path, or never its error path, shows."""
    if currently_in_test_context():
        event(name)


def assert_one_line_naming(err, *paths) -> None:
    """`err` (an exception or its text) is one line naming one of `paths`."""
    message = str(err)
    assert message.strip(), f"an empty message: {err!r}"
    assert "\n" not in message, f"not one line: {message!r}"
    assert any(str(path) in message for path in paths), f"the message names none of {paths}: {message!r}"


# ---------------------------------------------------------------------------------------------------
# Mutations

@st.composite
def mutated(draw, original: bytes, max_edits: int = 6, edits=("flip", "set", "insert", "delete", "cut"),
            start: int = 0) -> bytes:
    """`original` with a few edits: bits flipped, bytes set, inserted or deleted, or cut short; with `start`,
    flips and sets only from that offset on."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, max_edits))):
        edit = draw(st.sampled_from(edits))
        if edit == "insert" or len(data) <= start:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
            continue
        at = draw(st.integers(start, len(data) - 1))
        if edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]) | st.integers(0, 255))
        elif edit == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-3, 300) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def json_paths(value, prefix=()) -> list[tuple]:
    """Every place inside a JSON value (dict keys and list indices), the value itself first."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            paths += json_paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            paths += json_paths(inner, prefix + (index,))
    return paths


@st.composite
def json_changed(draw, original):
    """A copy of `original` with one to three places replaced by random JSON values or removed."""
    value = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(json_paths(value)))
        if not path:
            value = draw(json_values)
            continue
        parent = value
        try:
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this place
        if draw(st.integers(0, 4)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return value


# ---------------------------------------------------------------------------------------------------
# 1. IDX

IDX_ARRAY = (np.arange(2 * 3 * 4) * 7 % 256).astype(np.uint8).reshape(2, 3, 4)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_idx(fuzz_dir) -> dict[str, bytes]:
    files = {}
    for name in ("valid.idx", "valid.idx.gz"):
        write_idx(fuzz_dir / name, IDX_ARRAY)
        files[name] = (fuzz_dir / name).read_bytes()
    return files


def check_idx(path: Path, raw: bytes) -> None:
    """read_idx either returns an array exactly as large as the file says, or raises a one-line error naming it."""
    path.write_bytes(raw)
    with no_hang():
        try:
            array = read_idx(path)
        except SmallvisionError as err:
            assert_one_line_naming(err, path)
            outcome("refused")
            return
    outcome("read")
    body = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    assert isinstance(array, np.ndarray)
    assert body[2] in IDX_TYPES and array.dtype == IDX_TYPES[body[2]].newbyteorder("=")
    assert array.shape == struct.unpack(f">{body[3]}I", body[4:4 + 4 * body[3]])
    assert 4 + 4 * array.ndim + array.nbytes == len(body)


@FUZZ
@given(raw=st.binary(max_size=64) | st.binary(max_size=48).map(lambda b: b"\x1f\x8b" + b)
       | st.binary(max_size=48).map(lambda b: b"\x00\x00\x08" + b))
def test_idx_random_bytes(fuzz_dir, raw):
    check_idx(fuzz_dir / "random.idx", raw)


@FUZZ
@given(data=st.data(), name=st.sampled_from(["valid.idx", "valid.idx.gz"]))
def test_idx_mutated(fuzz_dir, valid_idx, data, name):
    original = valid_idx[name]
    if name.endswith(".gz") and data.draw(st.booleans()):  # damage the IDX inside a good gzip stream too
        raw = gzip.compress(data.draw(mutated(gzip.decompress(original))), mtime=0)
    else:
        raw = data.draw(mutated(original))
    check_idx(fuzz_dir / ("mutated-" + name), raw)


def test_idx_cut_at_every_length(fuzz_dir, valid_idx):
    for name, original in valid_idx.items():
        for length in range(len(original)):
            check_idx(fuzz_dir / ("cut-" + name), original[:length])
    inner = gzip.decompress(valid_idx["valid.idx.gz"])
    for length in range(len(inner)):  # a whole gzip stream around a cut IDX
        check_idx(fuzz_dir / "cut-inner.idx.gz", gzip.compress(inner[:length], mtime=0))


dimension = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2, 3, 4, 2**8, 2**16, 2**31, 2**32 - 1])


@FUZZ
@given(type_code=st.sampled_from(sorted(IDX_TYPES)) | st.integers(0, 255),
       dims=st.lists(dimension | st.integers(0, 5), min_size=0, max_size=6),
       ndim_change=st.integers(-2, 2), body=st.integers(0, 200), compress=st.booleans())
# The four dimensions 2^16 multiply to 2^64, which is 0 in 64-bit arithmetic: an empty body fits them there.
@example(type_code=0x08, dims=[2**16] * 4, ndim_change=0, body=0, compress=False)
@example(type_code=0x0C, dims=[2**32 - 1, 2**32 - 1, 0], ndim_change=0, body=0, compress=False)
def test_idx_header_dims_changed(fuzz_dir, type_code, dims, ndim_change, body, compress):
    """A header whose type, number of dimensions or sizes were changed, before a body of any length."""
    ndim = min(max(len(dims) + ndim_change, 0), 255)
    raw = bytes([0, 0, type_code, ndim]) + struct.pack(f">{len(dims)}I", *dims) + bytes(range(256))[:body]
    if compress:
        raw = gzip.compress(raw, mtime=0)
    check_idx(fuzz_dir / "dims.idx", raw)


# ---------------------------------------------------------------------------------------------------
# 2. Images

def small_images() -> dict[str, bytes]:
    """A 12x10 JPEG with an EXIF orientation (so damage reaches the EXIF reader too), an RGB PNG with a
    text chunk, and a 16-bit greyscale PNG."""
    from PIL import Image, PngImagePlugin

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8), "RGB")
    files = {}
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=80, exif=exif.tobytes())
    files["image.jpg"] = buffer.getvalue()
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "fuzz")
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", pnginfo=text)
    files["image.png"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 65536, (10, 12), dtype=np.uint16)).save(buffer, format="PNG")
    files["grey16.png"] = buffer.getvalue()
    return files


IMAGES = small_images()
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe1", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
         b"RIFF\x00\x00\x00\x00WEBP"]


def check_decode(content: bytes, channels: int, size: int) -> None:
    """decode_image (the data cache's per-file step) gives pixels of the asked size, or DamagedImage: a skip
    with a one-line reason."""
    with no_hang():
        try:
            pixels, info = decode_image(content, channels, size, size)
        except DamagedImage as err:
            assert str(err).strip() and "\n" not in str(err), f"a skip reason must be one line: {err!r}"
            outcome("skipped")
            return
    outcome("decoded")
    assert pixels.shape == (size, size, channels) and pixels.dtype == np.uint8
    assert info["width"] > 0 and info["height"] > 0 and isinstance(info["format"], str)


def check_load(path: Path, content: bytes, channels: int, size: int, invert: bool) -> None:
    """load_image (predict's, explain's) gives a tensor [C, H, W], or a one-line error naming the file."""
    path.write_bytes(content)
    with no_hang():
        try:
            tensor = load_image(path, channels, size, size, invert)
        except SmallvisionError as err:
            assert_one_line_naming(err, path)
            return
    assert tuple(tensor.shape) == (channels, size, size) and str(tensor.dtype) == "torch.uint8"


def test_images_cut_at_every_length():
    for name, original in IMAGES.items():
        for length in range(len(original)):
            check_decode(original[:length], 3, 8)


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(IMAGES)), channels=st.sampled_from([1, 3]),
       size=st.sampled_from([4, 8, 13]))
def test_images_mutated(data, name, channels, size):
    check_decode(data.draw(mutated(IMAGES[name])), channels, size)


@FUZZ
@given(magic=st.sampled_from(MAGIC), rest=st.binary(max_size=200), suffix=st.sampled_from([".jpg", ".png"]),
       channels=st.sampled_from([1, 3]), invert=st.booleans())
def test_images_random_bytes_in_image_files(fuzz_dir, magic, rest, suffix, channels, invert):
    content = magic + rest
    check_decode(content, channels, 8)
    check_load(fuzz_dir / f"random{suffix}", content, channels, 8, invert)


# ---------------------------------------------------------------------------------------------------
# 3. Recipe TOML

FIELD_TYPES = {flat: PATH_TYPES[path] for flat, path in FLAT.items()}  # every field, by its flat name
toml_scalars = (st.booleans() | st.integers(-2**63, 2**63 - 1) | st.integers(-3, 300) | st.floats()
                | st.floats(-2.0, 2.0) | st.text(max_size=10) | st.sampled_from(["adam", "sgd", "bf16", "rgb", "cpu"])
                | st.dates() | st.datetimes() | st.times())
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
recipe_keys = (st.sampled_from(sorted(FIELD_TYPES)) | st.sampled_from(sorted(PATH_TYPES)) | st.sampled_from(sorted(GROUPS))
               | st.text(max_size=10) | st.sampled_from(["self", "changes", ""]))


def has_declared_type(value, declared) -> bool:
    import types
    import typing

    options = typing.get_args(declared) if isinstance(declared, types.UnionType) else (declared,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if typing.get_origin(option) is list:
            if isinstance(value, list) and all(has_declared_type(v, typing.get_args(option)[0]) for v in value):
                return True
        elif typing.get_origin(option) is dict:
            key, kind = typing.get_args(option)
            if isinstance(value, dict) and all(has_declared_type(k, key) and has_declared_type(v, kind)
                                               for k, v in value.items()):
                return True
        elif isinstance(option, type) and isinstance(value, option) and (option is bool) == isinstance(value, bool):
            return True
    return False


def check_recipe_text(text: str, where: str = "fuzzed.toml"):
    """Recipe.from_toml gives a recipe whose every field has its declared type and which reads back as
    itself, or raises one line naming where the recipe came from."""
    with no_hang():
        try:
            recipe = Recipe.from_toml(text, where)
        except SmallvisionError as err:
            assert_one_line_naming(err, where)
            outcome("refused")
            return None
    outcome("loaded")
    for name, declared in FIELD_TYPES.items():
        assert has_declared_type(recipe.get(name), declared), f"{name} = {recipe.get(name)!r}"
    assert Recipe.from_toml(recipe.to_toml()) == recipe  # a NaN would fail here: it never equals itself
    return recipe


@FUZZ
@given(values=st.dictionaries(recipe_keys, toml_values, max_size=4))
@example(values={"self": 1})
@example(values={"learning_rate": math.nan})
def test_recipe_random_keys_and_values(values):
    check_recipe_text(tomli_w.dumps(values))


def values_of_kind(declared) -> st.SearchStrategy:
    """Values of a field's declared type (bool, int, float, str, list, dict), in range or far out of it, NaN and inf
    too."""
    import types
    import typing

    from smallvision.recipe import CHOICES

    words = sorted({word for allowed in CHOICES.values() for word in allowed})
    kinds = {bool: st.booleans(), int: st.integers(-3, 300) | st.integers(-2**63, 2**63 - 1),
             float: st.floats(-3.0, 3.0) | st.floats() | st.integers(-3, 3),
             str: st.sampled_from(words) | st.text(max_size=10)}
    options = typing.get_args(declared) if isinstance(declared, types.UnionType) else (declared,)
    def of(option):
        if typing.get_origin(option) is list:
            return st.lists(kinds[typing.get_args(option)[0]], max_size=4)
        if typing.get_origin(option) is dict:  # class_weight's table: class -> weight
            key, value = typing.get_args(option)
            return st.dictionaries(kinds[key], kinds[value], max_size=3)
        return kinds[option]

    return st.one_of([of(option) for option in options if option is not type(None)])


@FUZZ
@given(field_and_value=st.sampled_from(sorted(FIELD_TYPES)).flatmap(
    lambda field: st.tuples(st.just(field), values_of_kind(FIELD_TYPES[field]) | toml_values)), grouped=st.booleans())
def test_recipe_one_field_of_any_value(field_and_value, grouped):
    """A valid recipe with one known field set to a value of its type (in range or out of it, NaN, inf) or to
    anything else (a wrong type, a table, a date), flat or in its group's table."""
    field, value = field_and_value
    if grouped:
        table, name = FLAT[field].split(".")
        recipe = {"name": "fuzz", "schedule": {"epochs": 2}}
        recipe.setdefault(table, {})[name] = value
        check_recipe_text(tomli_w.dumps(recipe))
    else:
        check_recipe_text(tomli_w.dumps({"name": "fuzz", "epochs": 2, field: value}))


LAYER_PIECES = ["Conv2D(", "Dense(", "MaxPooling2D(", "Residual([", "Input(shape=(8, 8, 1))", "Flatten()", "(", ")",
                "[", "])", ", ", " ", "3", "-1", "0", "2.5", "1e999", "2**64", "/0", "*", "'same'", "'relu'", "activation=",
                "units=", "**", "#", "\n", "'", "\"", "None", "True", "x", "lambda: 0", "__import__('os')"]


@FUZZ
@given(pieces=st.lists(st.sampled_from(LAYER_PIECES), max_size=16), as_list=st.booleans())
@example(pieces=["Conv2D(", "3", ", ", "3", ")", " ", "Flatten()", " ", "Dense(", "3", ")"], as_list=False)
def test_recipe_layers_of_random_text(pieces, as_list):
    """A recipe's `layers` (read as literals by Python's tokenizer and ast) as random text or a list of fragments."""
    check_recipe_text(tomli_w.dumps({"layers": pieces if as_list else "".join(pieces)}))


@FUZZ
@given(text=st.text(max_size=80) | st.lists(st.sampled_from(
    ["epochs = ", "[x]\n", "=", "\"", "'''", "\n", "1e999", "nan", "-inf", "0x1F", "[1, 2", "]", "{a=1}",
     "layers = \"", "Conv2D(", ")", "zoom_range = [", "2024-01-01", "true", "# c\n", "\\u0000", "\x00"]),
    max_size=12).map("".join))
def test_recipe_random_text(fuzz_dir, text):
    check_recipe_text(text)


@FUZZ
@given(raw=st.binary(max_size=60) | st.text(max_size=40).map(lambda t: t.encode("utf-16")))
def test_recipe_file_of_random_bytes(fuzz_dir, raw):
    """load_recipe on a .toml file of any bytes (not UTF-8, NUL bytes) names the file when it refuses it."""
    path = fuzz_dir / "random.toml"
    path.write_bytes(raw)
    with no_hang():
        try:
            load_recipe(str(path))
        except SmallvisionError as err:
            assert_one_line_naming(err, path)
            outcome("refused")
            return
    outcome("loaded")


# ---------------------------------------------------------------------------------------------------
# 4. and 5. A run: model.json and model.safetensors; a checkpoint

LAYERS = "Conv2D(2, 3, activation='relu') MaxPooling2D(2) Flatten() Dense(3, activation='softmax')"
CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory as the workflow writes one (save_run, and model.json with the workflow's fields), of a
    network of 77 weights on 8x8 greyscale images, without training it (the fuzzing needs the files, not
    a trained network); and a checkpoint laid out as save_checkpoint lays one out: the tensors, and the
    loop's state as JSON in the header's metadata."""
    import torch

    from smallvision.checkpoint import save_checkpoint
    from smallvision.models import CUSTOM, build_network
    from smallvision.data.imageset import ImageSet
    from smallvision.loop import Loop, Stage, TrainingState
    from smallvision.models.layer_text import layers_to_json, parse_layers
    from smallvision.run import save_run
    from smallvision.runmeta import RunMeta

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("run")
    recipe = Recipe(name="fuzz").replace(layers=LAYERS, epochs=1, precision="fp32", device="cpu")
    model = build_network(parse_layers(LAYERS), (1, 8, 8), len(CLASSES))
    meta = {
        "format": "smallvision-run/1", "source": "tiny",
        "architecture": {"model": CUSTOM, "backbone": None, "input_shape": [1, 8, 8], "num_classes": len(CLASSES),
                         "dropout": 0.0, "layers": layers_to_json(model.keras_layers)},
        "class_names": CLASSES, "output_activation": model.output_activation, "precision": "fp32",
        "precision_reason": "asked for", "test_time_flip": False,
        "preprocessing": {"rescale": 1 / 255, "mean": None, "std": None, "channels_last": True,
                          "resize": "none", "color_mode": "L", "invert_light_background": False},
    }
    save_run(directory, model, recipe, RunMeta.from_json(meta), [], {"epochs": 1})
    # The checkpoint of a Loop one optimiser step in, written by save_checkpoint itself.
    images = ImageSet(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1, 2]),
                      CLASSES)
    loop = Loop(model, images, recipe, device=torch.device("cpu"), progress="off", stage=Stage(1))
    model(torch.rand(6, 1, 8, 8)).sum().backward()
    loop.optimizer.step()
    loop.state = TrainingState(step=1, epoch=0, order=torch.randperm(6), cursor=6, loss_sum=0.5, correct=2, seen=6)
    loop.state.history.epochs.append({"epoch": 1, "loss": 1.0})
    save_checkpoint(directory, loop)
    return directory


class RunCopy:
    """A copy of the fixture run that each example overwrites: `put` writes one file damaged and the others as
    they were made. (An object with a short repr, so that a failing example does not print every file.)"""

    def __init__(self, original: Path, directory: Path):
        self.files = {path.name: path.read_bytes() for path in original.iterdir() if path.is_file()}
        self.directory = directory
        directory.mkdir()
        for name, content in self.files.items():
            (directory / name).write_bytes(content)
        self.damaged: str | None = None

    def put(self, name: str, content: bytes) -> Path:
        if self.damaged not in (None, name):  # the last example's damaged file, as it was
            (self.directory / self.damaged).write_bytes(self.files[self.damaged])
        self.damaged = name
        (self.directory / name).write_bytes(content)
        return self.directory / name

    def __repr__(self) -> str:
        return f"RunCopy({self.directory})"


@pytest.fixture(scope="module")
def fuzzed_run(tiny_run, tmp_path_factory) -> RunCopy:
    return RunCopy(tiny_run, tmp_path_factory.mktemp("fuzzed-run") / "run")


def test_the_unchanged_run_loads(tiny_run):
    """The fixtures the fuzzing starts from are good: the run loads and scores, the checkpoint reads."""
    import torch

    from smallvision.checkpoint import FORMAT, read_checkpoint
    from smallvision.run import Run

    run = Run(tiny_run, "cpu")
    assert run.class_names == CLASSES
    assert tuple(run.probabilities(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape) == (2, 3)
    header, tensors = read_checkpoint(tiny_run)
    assert header["format"] == FORMAT and "loop.order" in tensors


def check_run(directory: Path, *damaged: Path) -> None:
    """Run() loads a run that can score an image of its input shape, or raises one line naming the damaged file
    (or one of them, where a mismatch of two cannot tell which is wrong)."""
    import torch

    from smallvision.run import Run

    with no_hang():
        try:
            run = Run(directory, "cpu")
        except SmallvisionError as err:
            assert_one_line_naming(err, *damaged)
            outcome("refused")
            return
        outcome("loaded")
        channels, height, width = run.meta.architecture.input_shape
        probabilities = run.probabilities(torch.zeros(1, channels, height, width, dtype=torch.uint8))
    assert tuple(probabilities.shape) == (1, len(run.class_names))
    assert all(isinstance(name, str) for name in run.class_names)


@FUZZ
@given(data=st.data())
def test_model_json_random_values(fuzzed_run, data):
    """model.json as a random JSON value, or the real one with a few places replaced by random values."""
    meta = json.loads(fuzzed_run.files["model.json"])
    value = data.draw(json_values if data.draw(st.integers(0, 4)) == 0 else json_changed(meta))
    path = fuzzed_run.put("model.json", json.dumps(value).encode())
    check_run(path.parent, path, path.parent / "model.safetensors")  # the weights may no longer fit the network


def test_model_json_name_of_two_lines(fuzzed_run):
    """A network name holding a newline, in the message of a network that does not fit its classes."""
    from smallvision.run import Run

    meta = json.loads(fuzzed_run.files["model.json"])
    meta["architecture"]["model"] = "two\nlines"
    meta["architecture"]["layers"][-1]["config"]["units"] = 5
    path = fuzzed_run.put("model.json", json.dumps(meta).encode())
    with pytest.raises(SmallvisionError) as caught:
        Run(path.parent, "cpu")
    assert_one_line_naming(caught.value, path)
    assert "ends in 5 units" in str(caught.value)


@FUZZ
@given(data=st.data())
def test_model_json_mutated_text(fuzzed_run, data):
    path = fuzzed_run.put("model.json", data.draw(mutated(fuzzed_run.files["model.json"])))
    check_run(path.parent, path, path.parent / "model.safetensors")


def safetensors_parts(raw: bytes) -> tuple[dict, bytes]:
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def safetensors_bytes(header, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


SAFETENSORS_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
                    "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
                    "C64": 64, "F64": 64, "I64": 64, "U64": 64}


@st.composite
def damaged_safetensors(draw, original: bytes) -> bytes:
    """A safetensors file with its bytes mutated, its tensors' bytes changed in place (a file that still reads),
    its header's JSON changed, or its length prefix rewritten."""
    kind = draw(st.sampled_from(["bytes", "tensors", "header", "header", "dtype", "length"]))
    if kind == "bytes":
        return draw(mutated(original))
    if kind == "tensors":
        return draw(mutated(original, edits=("flip", "set"), start=len(original) - len(safetensors_parts(original)[1])))
    header, body = safetensors_parts(original)
    if kind == "dtype":  # another dtype over the same bytes, its shape flattened to fit them where it can
        name = draw(st.sampled_from(sorted(key for key in header if key != "__metadata__")))
        dtype, bits = draw(st.sampled_from(sorted(SAFETENSORS_BITS.items())) | st.tuples(st.text(max_size=4), st.just(8)))
        start, end = header[name]["data_offsets"]
        header[name].update(dtype=dtype, shape=[(end - start) * 8 // bits])
        return safetensors_bytes(header, body)
    if kind == "header":
        changed = draw(json_changed(header))
        if draw(st.booleans()):  # the tensors' bytes cut or lengthened as well
            body = body[:draw(st.integers(0, len(body)))] + draw(st.binary(max_size=8))
        return safetensors_bytes(changed, body)
    size = draw(st.integers(0, 2**64 - 1) | st.integers(0, len(original)))
    return size.to_bytes(8, "little") + original[8:]


@FUZZ
@given(data=st.data())
def test_model_safetensors_damaged(fuzzed_run, data):
    path = fuzzed_run.put("model.safetensors", data.draw(damaged_safetensors(fuzzed_run.files["model.safetensors"])))
    check_run(path.parent, path)


def with_dtype(original: bytes, dtype: str) -> bytes:
    header, body = safetensors_parts(original)
    header[min(key for key in header if key != "__metadata__")]["dtype"] = dtype
    return safetensors_bytes(header, body)


def test_model_safetensors_error_of_many_lines(fuzzed_run):
    """safetensors' message quotes a bad dtype as it is, newline included (found by the fuzzing at 5,000
    examples): the error is still one line."""
    path = fuzzed_run.put("model.safetensors", with_dtype(fuzzed_run.files["model.safetensors"], "\n"))
    check_run(path.parent, path)


def check_checkpoint(path: Path) -> None:
    """read_checkpoint (train --resume) gives a header of this version and tensors, or one line naming the file."""
    from smallvision.checkpoint import FORMAT, read_checkpoint

    with no_hang():
        try:
            header, tensors = read_checkpoint(path.parent)
        except SmallvisionError as err:
            assert_one_line_naming(err, path)
            outcome("refused")
            return
    assert isinstance(header, dict) and header["format"] == FORMAT
    assert all(hasattr(tensor, "shape") for tensor in tensors.values())
    outcome("read")


@FUZZ
@given(data=st.data())
def test_checkpoint_file_damaged(fuzzed_run, data):
    """A checkpoint's bytes mutated, its safetensors header changed, or its length prefix rewritten."""
    from smallvision.checkpoint import NAME

    check_checkpoint(fuzzed_run.put(NAME, data.draw(damaged_safetensors(fuzzed_run.files[NAME]))))


def test_checkpoint_error_of_many_lines(fuzzed_run):
    """As test_model_safetensors_error_of_many_lines, for read_checkpoint (found by test_checkpoint_file_damaged
    at 5,000 examples)."""
    from smallvision.checkpoint import NAME

    check_checkpoint(fuzzed_run.put(NAME, with_dtype(fuzzed_run.files[NAME], "\n")))


@FUZZ
@given(data=st.data())
def test_checkpoint_state_damaged(fuzzed_run, data):
    """A checkpoint whose safetensors file is sound but whose JSON state (in the header's metadata) is damaged:
    its text mutated, or a few of its values replaced by random JSON values."""
    from smallvision.checkpoint import NAME

    header, body = safetensors_parts(fuzzed_run.files[NAME])
    state = json.loads(header["__metadata__"]["state"])
    if data.draw(st.booleans()):
        text = json.dumps(data.draw(json_changed(state)))
    else:
        text = data.draw(mutated(json.dumps(state).encode())).decode("utf-8", "replace")
    header["__metadata__"]["state"] = text
    check_checkpoint(fuzzed_run.put(NAME, safetensors_bytes(header, body)))


# ---------------------------------------------------------------------------------------------------
# 6. predict, through the command line in-process

@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".jpg", ".png", ".gif", ".bmp", ".webp", ".tif"]))
def test_predict_on_random_files(tiny_run, fuzz_dir, data, suffix):
    """`smallvision predict RUN FILE` answers one JSON line for the file: its label (exit 0), or its `error`
    with the same one-line error on stderr (exit 2); never a traceback."""
    from smallvision.cli import main

    if data.draw(st.booleans()):
        content = data.draw(st.sampled_from(MAGIC)) + data.draw(st.binary(max_size=120))
    else:
        content = data.draw(mutated(IMAGES[data.draw(st.sampled_from(sorted(IMAGES)))]))
    path = fuzz_dir / f"predict{suffix}"
    path.write_bytes(content)
    out, err = io.StringIO(), io.StringIO()
    with no_hang(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["predict", str(tiny_run), str(path), "--device", "cpu", "--top", "2"])
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, out.getvalue()
    answer = json.loads(lines[0])
    assert answer["path"] == str(path)
    if "error" in answer:
        outcome("error")
        assert status == 2
        assert_one_line_naming(answer["error"], path)
        assert err.getvalue() == f"smallvision: error: {answer['error']}\n"
    else:
        outcome("answered")
        assert status == 0 and err.getvalue() == "", err.getvalue()
        assert answer["label"] in CLASSES and len(answer["top"]) == 2 and 0 <= answer["probability"] <= 1


# ---------------------------------------------------------------------------------------------------
# Keras files: a functional model's config.json (its layer chain, inbound nodes, nested augmentation)

KERAS_FUNCTIONAL = Path(__file__).parent / "data" / "keras" / "functional_augment.keras"


@FUZZ
@given(data=st.data())
def test_keras_functional_config_changed(fuzz_dir, data):
    """A real Keras 3 functional archive whose config.json has a few places replaced or removed: the network and
    its weights are read (what `import-keras` does before it writes the run), or one line names the file."""
    import zipfile

    from smallvision.keras_files import keras_network

    with zipfile.ZipFile(KERAS_FUNCTIONAL) as source:
        parts = {name: source.read(name) for name in source.namelist()}
    config = data.draw(json_changed(json.loads(parts["config.json"])))
    path = fuzz_dir / "changed.keras"
    with zipfile.ZipFile(path, "w") as target:
        for name, content in parts.items():
            target.writestr(name, json.dumps(config) if name == "config.json" else content)
    with no_hang():
        try:
            keras_network(path)
        except SmallvisionError as err:
            assert_one_line_naming(err, path)
            outcome("refused")
            return
    outcome("read")
