import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import smallvision as sv
from smallvision.data.idx import read_idx


@pytest.fixture(scope="module")
def slice_run(mnist_slice, tmp_path_factory):
    """seed-mnist for 10 epochs on 2,000 MNIST training images, with a validation split."""
    out = tmp_path_factory.mktemp("runs") / "slice"
    start = time.perf_counter()
    run = sv.train(mnist_slice, "seed-mnist", out=out, epochs=10, val_split=0.1, seed=0, progress=False)
    run.wall_seconds = time.perf_counter() - start  # the whole call: data, training, validation, test, saving
    return run


def test_a_short_training_clearly_learns(slice_run):
    metrics = slice_run.metrics
    assert metrics["test_accuracy"] > 0.9
    assert metrics["val_accuracy"] > 0.85
    assert metrics["epochs"] == 10


def test_the_timings_add_up(slice_run):
    """train_seconds is the epochs' training time (validation apart) and images_per_second the images
    trained on over it: every training image once an epoch (steps_per_epoch 0 is one pass)."""
    metrics = slice_run.metrics
    rows = list(csv.DictReader(open(slice_run.path / "history.csv")))
    epoch_seconds = [float(r["seconds"]) for r in rows]
    assert len(epoch_seconds) == 10 and min(epoch_seconds) > 0
    assert metrics["train_seconds"] == pytest.approx(sum(epoch_seconds), abs=5e-4 + 1e-9)  # rounded to 3 places
    validation_seconds = sum(float(r["val_seconds"]) for r in rows)
    assert metrics["train_seconds"] + validation_seconds < slice_run.wall_seconds
    counts = json.loads((slice_run.path / "data.json").read_text())["counts"]
    training_images = sum(counts["train"].values())
    assert training_images + sum(counts["validation"].values()) == 2000 and 1750 < training_images < 1850
    seen = 10 * training_images
    seconds = metrics["train_seconds"]  # rounded to 3 places, images_per_second to 1
    assert seen / (seconds + 5e-4) - 0.05 <= metrics["images_per_second"] <= seen / (seconds - 5e-4) + 0.05


def test_the_run_directory_holds_everything(slice_run):
    names = {p.name for p in slice_run.path.iterdir()}
    assert {"recipe.toml", "model.safetensors", "model.json", "history.csv", "metrics.json", "curves.png"} <= names
    meta = json.loads((slice_run.path / "model.json").read_text())
    layers = meta["architecture"].pop("layers")  # the network itself, in Keras' words
    assert [entry["class_name"] for entry in layers] == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D",
                                                         "Flatten", "Dense", "Dense"]
    assert layers[-1]["config"] == {"units": 10, "activation": "softmax", "use_bias": True}
    assert meta["architecture"] == {"model": "mnist_convnet", "backbone": None, "input_shape": [1, 28, 28],
                                    "num_classes": 10, "dropout": 0.0}
    assert meta["class_names"] == [str(i) for i in range(10)]
    assert meta["preprocessing"]["invert_light_background"] is True
    rows = list(csv.DictReader(open(slice_run.path / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11)) and float(rows[-1]["val_accuracy"]) > 0.85
    assert sv.load_recipe(str(slice_run.path / "recipe.toml")).schedule.epochs == 10
    assert Image.open(slice_run.path / "curves.png").size[0] > 500
    assert not any(name.startswith(".partial") for name in names)


def test_reloading_gives_identical_predictions(slice_run, mnist_slice):
    images = torch.from_numpy(read_idx(mnist_slice / "t10k-images-idx3-ubyte")[:300].copy()).unsqueeze(1)
    reloaded = sv.load_run(slice_run.path)
    torch.testing.assert_close(reloaded.probabilities(images), slice_run.probabilities(images), rtol=0, atol=0)
    assert reloaded.evaluate(mnist_slice)["accuracy"] == pytest.approx(slice_run.metrics["test_accuracy"])


def test_a_damaged_run_is_a_clear_error_naming_the_file(slice_run, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from smallvision.errors import SmallvisionError
    damaged = tmp_path / "run"
    shutil.copytree(slice_run.path, damaged)
    weights = (slice_run.path / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(weights[:1000])
    with pytest.raises(SmallvisionError, match="model.safetensors: unreadable .* damaged or incomplete"):
        sv.load_run(damaged)
    tensors = load_file(str(slice_run.path / "model.safetensors"))
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(damaged / "model.safetensors"))
    with pytest.raises(SmallvisionError, match="model.safetensors: its weights do not fit the network in model.json"):
        sv.load_run(damaged)
    (damaged / "model.safetensors").write_bytes(weights)
    meta = json.loads((damaged / "model.json").read_text())
    del meta["preprocessing"]
    (damaged / "model.json").write_text(json.dumps(meta))
    with pytest.raises(SmallvisionError, match="model.json: not a run's model description \\(no 'preprocessing' field"):
        sv.load_run(damaged)


def test_predict_reads_files_of_any_size_and_mode(slice_run, mnist_slice, tmp_path):
    digits = read_idx(mnist_slice / "t10k-images-idx3-ubyte")[:20]
    labels = read_idx(mnist_slice / "t10k-labels-idx1-ubyte")[:20]
    for i, digit in enumerate(digits):
        big = Image.fromarray(255 - digit).resize((112, 112), Image.Resampling.BICUBIC)  # black ink on white
        (big.convert("RGB") if i % 2 else big.convert("RGBA")).save(tmp_path / f"{i:02d}.{'jpg' if i % 2 else 'png'}")
    results = slice_run.predict([tmp_path])
    assert len(results) == 20 and set(results[0]) == {"path", "label", "probability", "top", "unknown", "unknown_score"}
    assert len(results[0]["top"]) == 5 and results[0]["top"][0][0] == results[0]["label"]
    hits = sum(r["label"] == str(label) for r, label in zip(results, labels))
    assert hits >= 17


def test_same_seed_same_numbers(mnist_slice, tmp_path):
    options = dict(epochs=2, steps_per_epoch=4, progress=False)
    first = sv.train(mnist_slice, "seed-mnist", out=tmp_path / "a", seed=0, **options)
    second = sv.train(mnist_slice, "seed-mnist", out=tmp_path / "b", seed=0, **options)
    other = sv.train(mnist_slice, "seed-mnist", out=tmp_path / "c", seed=1, **options)

    def history(run):  # epoch, loss, accuracy, learning_rate: everything but the timings
        return np.loadtxt(run.path / "history.csv", delimiter=",", skiprows=1, usecols=(0, 1, 2, 4), ndmin=2)

    a, b, c = history(first), history(second), history(other)
    assert a.shape == (2, 4) and a[:, 0].tolist() == [1.0, 2.0]
    np.testing.assert_array_equal(a, b)  # bit for bit on one machine, not merely close
    for key in ("test_accuracy", "test_loss"):
        assert first.metrics[key] == second.metrics[key], key
    weights, again = first.model.state_dict(), second.model.state_dict()
    assert weights.keys() == again.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, again[name]), name
    # the comparison can fail: another seed shuffles and initialises differently
    assert not np.array_equal(a[:, 1], c[:, 1])
    different = other.model.state_dict()
    assert not any(torch.equal(tensor, different[name]) for name, tensor in weights.items())


def test_a_digit_drawn_small_on_a_big_white_page_is_framed_like_mnist(slice_run, mnist_slice, tmp_path):
    digits = read_idx(mnist_slice / "t10k-images-idx3-ubyte")[:20]
    labels = read_idx(mnist_slice / "t10k-labels-idx1-ubyte")[:20]
    for i, digit in enumerate(digits):
        page = Image.new("L", (400, 300), 255)
        small = Image.fromarray(255 - digit).resize((70, 70), Image.Resampling.BICUBIC)
        page.paste(small, (20 + 13 * i, 200 - 7 * i))  # somewhere off-centre, a different place each time
        page.save(tmp_path / f"{i:02d}.png")
    results = slice_run.predict([tmp_path])
    assert sum(r["label"] == str(label) for r, label in zip(results, labels)) >= 17


def test_an_epoch_reads_from_the_device_only_at_the_progress_refreshes(monkeypatch):
    """No host synchronisation per step: the loss, accuracy and NaN guard are read at the progress refreshes
    (here, quiet and quick, only at the epoch's end), and augmentation decides from its settings, not from
    each batch's maps."""
    from smallvision.data.imageset import ImageSet
    from smallvision.models import create_model
    from smallvision.recipe import builtin_recipes
    from smallvision.step import Refresh
    from smallvision.loop import Loop

    generator = torch.Generator().manual_seed(0)
    train = ImageSet(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=generator),
                     torch.randint(0, 10, (64,), generator=generator), [str(i) for i in range(10)])
    recipe = builtin_recipes()["seed-mnist"].replace(epochs=1, steps_per_epoch=120, batch_size=8, rotation_range=10.0,
                                                     horizontal_flip=True, brightness_range=[0.8, 1.2])
    model = create_model("mnist_convnet", (1, 28, 28), 10)
    # built before the reads are counted: counting the host's labels for the class weights is not an epoch's work
    loop = Loop(model, train, recipe, device=torch.device("cpu"), progress=False)
    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    for name in ("allclose", "equal", "is_nonzero"):  # answers in Python, so they read the device too
        original = getattr(torch, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(*args, **kwargs)
        monkeypatch.setattr(torch, name, counted)
    monkeypatch.setattr(Refresh, "SECONDS_QUIET", 3600.0)  # however slow the machine: the end's refresh alone
    loop.fit()
    assert 0 < len(reads) <= 4, reads  # the sums, the NaN guard: one refresh


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's sync debug mode watches CUDA only (no GPU "
                    "here); the test above counts the CPU's reads")
@pytest.mark.parametrize("optimizer", ["rmsprop", "adamw", "sgd"])
def test_no_cuda_step_waits_for_the_gpu(monkeypatch, optimizer):
    """On a GPU, torch itself watches every step (augmentation, the learning rate, the forward and backward
    passes, the optimiser, the sums) for a call that waits for the device: there is none."""
    import warnings

    from smallvision.data.imageset import ImageSet
    from smallvision.models import create_model
    from smallvision.recipe import builtin_recipes
    from smallvision.step import Step
    from smallvision.loop import fit

    generator = torch.Generator().manual_seed(0)
    train = ImageSet(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=generator),
                     torch.randint(0, 10, (64,), generator=generator), [str(i) for i in range(10)])
    recipe = builtin_recipes()["seed-mnist"].replace(epochs=1, steps_per_epoch=30, batch_size=8, rotation_range=10.0,
                                                     horizontal_flip=True, optimizer=optimizer, schedule="onecycle")
    step, steps, waits = Step.__call__, [], []

    def watched(self, *args, **kwargs):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step(self, *args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        steps.append(1)
        waits.extend(str(w.message) for w in caught if "synchroniz" in str(w.message).lower())

    monkeypatch.setattr(Step, "__call__", watched)
    fit(create_model("mnist_convnet", (1, 28, 28), 10), train, recipe, device=torch.device("cuda"), progress=False)
    assert len(steps) == 30 and waits == [], waits[:3]


def test_one_process_refreshes_by_the_clock_and_several_every_50_batches(monkeypatch):
    from smallvision import step

    now = [0.0]
    monkeypatch.setattr(step.time, "perf_counter", lambda: now[0])
    shown, quiet, together = step.Refresh(1, progress=True), step.Refresh(1, progress=False), step.Refresh(2, True)
    assert [shown.due(i, False, False) for i in range(100)] == [False] * 100  # no time passed: no read
    assert shown.due(100, True, False) and shown.due(101, False, True)  # the epoch's end; a stop asked
    now[0] = 0.6
    assert shown.due(102, False, False) and not shown.due(103, False, False) and not quiet.due(104, False, False)
    now[0] = 5.1
    assert quiet.due(105, False, False)
    assert [i for i in range(200) if together.due(i, False, False)] == [49, 99, 149, 199]  # the clock not heeded


BN_LAYERS = ("Input(shape=(28, 28, 1)) Conv2D(8, 3, padding='same') BatchNormalization() Activation('relu') "
             "MaxPooling2D(2) Conv2D(16, 3) BatchNormalization() Activation('relu') GlobalAveragePooling2D() "
             "Dense(10, activation='softmax')")
NEEDS_COMPILER = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                                    reason="torch.compile on the CPU needs a C++ compiler (inductor); none here")


@NEEDS_COMPILER
def test_compiling_before_the_clock_leaves_the_weights_statistics_and_random_state_as_they_were():
    from smallvision.distributed import Ranks
    from smallvision.models import build_network
    from smallvision.models.layer_text import parse_layers
    from smallvision.optim import build_optimizer, flatten_parameters
    from smallvision.recipe import Recipe
    from smallvision.step import Step
    from smallvision.recipe import Preprocess

    torch.manual_seed(0)
    model = build_network(parse_layers(BN_LAYERS), (1, 28, 28), 10)
    groups = flatten_parameters(model)
    step = Step(model, build_optimizer(groups, Recipe()), groups, Recipe(), Preprocess(1 / 255), False, "fp32",
                torch.device("cpu"), Ranks())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    random_state = torch.get_rng_state()
    seconds = step.compile("default", {(4, 4), (3, 3)}, (1, 28, 28))
    assert seconds > 0 and step.compiled and not isinstance(step.losses, type(step.forward_and_loss))
    for name, tensor in model.state_dict().items():  # batch norm saw two batches of zeros while compiling
        assert torch.equal(tensor, before[name]), name
    assert torch.equal(torch.get_rng_state(), random_state)
    assert model.training  # compiled for the mode the steps run in


@NEEDS_COMPILER
@pytest.mark.slow  # two whole runs in new processes, the first compiling: 37 s on a 2-core AVX2 CPU
def test_a_compiled_step_trains_the_eager_weights_and_a_second_run_pays_less_to_compile(mnist_slice, tmp_path):
    """recipe.run.compile: the step compiled before the clock starts (at the full and the short last batch), so the
    run trains as the eager one does; compile_seconds in metrics.json, apart from train_seconds; a second run
    of the same network, in a new process, finds the compiled kernels in PyTorch's cache. Without batch norm,
    whose compiled statistics round differently, and with SGD, a step in proportion to the gradient (RMSprop's
    first steps are the gradient's sign: a rounding near zero becomes a whole step)."""
    layers = ("Input(shape=(28, 28, 1)) Conv2D(8, 3) Activation('relu') MaxPooling2D(2) Conv2D(16, 3) "
              "Activation('relu') GlobalAveragePooling2D() Dense(10, activation='softmax')")
    options = ["--epochs", "1", "--steps-per-epoch", "6", "--batch-size", "24", "--precision", "fp32", "--layers",
               layers, "--val-split", "0", "--optimizer", "sgd", "--lr", "0.05", "--quiet"]
    eager = sv.train(mnist_slice, "seed-mnist", out=tmp_path / "eager", epochs=1, steps_per_epoch=6, batch_size=24,
                     precision="fp32", layers=layers, progress=False, val_split=0.0, optimizer="sgd",
                     learning_rate=0.05)
    environment = {**os.environ, "SMALLVISION_PROGRESS": "0", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "kernels")}
    runs = []
    for name in ("first", "second"):
        subprocess.run([sys.executable, "-m", "smallvision", "train", str(mnist_slice), "--recipe", "seed-mnist",
                        *options, "--compile", "default", "--out", str(tmp_path / name)], env=environment, check=True,
                       capture_output=True)
        runs.append(sv.load_run(tmp_path / name))
    first, second = runs
    assert "compile_seconds" not in eager.metrics and first.recipe.run.compile == "default"
    assert 0 < second.metrics["compile_seconds"] < first.metrics["compile_seconds"] / 2, \
        (first.metrics["compile_seconds"], second.metrics["compile_seconds"])
    for name, tensor in eager.model.state_dict().items():
        assert torch.allclose(tensor, first.model.state_dict()[name], atol=1e-6, rtol=0), name
        assert torch.equal(first.model.state_dict()[name], second.model.state_dict()[name]), name


