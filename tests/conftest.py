import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from smallvision.data.idx import read_idx, write_idx

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SMALLVISION_PROGRESS", "0")

# bin/test runs the suite in one worker process per core (pytest-xdist). Each worker, and every process a test
# starts, gets its share of the cores: two workers of two threads each on two cores would spend their time
# waiting for each other's threads (OpenMP spins), not computing.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // WORKERS))

# Tests that share an expensive trained fixture run in one worker, which trains it once; a module's own
# module-scoped fixture keeps that module's tests together in the same way.
# (the shapes run takes 50 s on a 2-core AVX2 CPU, the runs of every kind 15 s: in two workers, not one after
# the other in the same one)
SHARED_TRAINING = ("shapes_run", "runs_of_every_kind")


def pytest_itemcollected(item):  # as each test is collected, before xdist reads the groups
    shared = [name for name in SHARED_TRAINING if name in item.fixturenames]
    if shared:
        item.add_marker(pytest.mark.xdist_group(shared[0]))
    elif any(definitions[-1].scope == "module" for definitions in item._fixtureinfo.name2fixturedefs.values()):
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_configure(config):
    if WORKERS > 1:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def shared_datasets() -> Path:
    return Path(os.environ.get("SMALLVISION_DATA") or REPO.parent / "shared" / "datasets")


def missing_shared_data(message: str) -> None:
    """Skip a test that needs the shared data sets; fail it where they must be there (CI)."""
    if os.environ.get("SMALLVISION_REQUIRE_DATA") == "1":
        pytest.fail(f"{message}, and SMALLVISION_REQUIRE_DATA=1")
    pytest.skip(message)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # a camera of Chromium's own (a moving test pattern), allowed without asking: the pages' webcam
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def playwright_or_skip():
    """Playwright's sync API, for a test that drives Debian's Chromium (`launch_chromium`): skipped where
    there is no chromium on PATH, failed where it must run (.ci/run installs it and sets
    SMALLVISION_REQUIRE_BROWSER=1)."""
    if not CHROMIUM:
        if os.environ.get("SMALLVISION_REQUIRE_BROWSER") == "1":
            pytest.fail("SMALLVISION_REQUIRE_BROWSER=1 but no chromium on PATH")
        pytest.skip("no chromium here (.ci/run installs Debian's)")
    return pytest.importorskip("playwright.sync_api")


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def watch_page(page, base: str) -> tuple[list, list]:
    """(the page's errors as they come, the addresses it asks for that are not `base`'s, data: or blob:)."""
    problems, elsewhere = [], []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda request: elsewhere.append(request.url)
            if not request.url.startswith((base, "data:", "blob:")) else None)
    return problems, elsewhere


class Listening:
    """`python -m smallvision ARGS` as its own process (a server of ours), and `found`: its first line matched
    against `first_line`, which must say where it listens."""

    def __init__(self, args: list, first_line: str):
        env = dict(os.environ, SMALLVISION_PROGRESS="0")
        env.pop("SMALLVISION_TOKEN", None)
        self.process = subprocess.Popen([sys.executable, "-m", "smallvision", *map(str, args)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=120)
        except queue.Empty:
            self.process.kill()
            raise AssertionError(f"{args[0]} said nothing in 120 s: {self.process.stderr.read()}") from None
        self.found = re.match(first_line, first.strip())
        assert self.found, first

    def stop(self, signum=signal.SIGINT) -> tuple[int, str]:
        self.process.send_signal(signum)
        try:
            status = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return status, self.process.stderr.read()


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    path = shared_datasets() / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        missing_shared_data(f"the shared MNIST files are not at {path}")
    return path


def write_idx_source(directory: Path, train_images, train_labels, test_images, test_labels) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / "train-images-idx3-ubyte.gz", train_images)
    write_idx(directory / "train-labels-idx1-ubyte.gz", train_labels)
    write_idx(directory / "t10k-images-idx3-ubyte", test_images)
    write_idx(directory / "t10k-labels-idx1-ubyte", test_labels)
    return directory


@pytest.fixture(scope="session")
def mnist_slice(shared_mnist, tmp_path_factory) -> Path:
    """The first 2,000 training and 2,000 test images of the shared MNIST, as an IDX directory."""
    return write_idx_source(
        tmp_path_factory.mktemp("mnist-slice"),
        read_idx(shared_mnist / "train-images-idx3-ubyte.gz")[:2000],
        read_idx(shared_mnist / "train-labels-idx1-ubyte.gz")[:2000],
        read_idx(shared_mnist / "t10k-images-idx3-ubyte.gz")[:2000],
        read_idx(shared_mnist / "t10k-labels-idx1-ubyte.gz")[:2000],
    )


@pytest.fixture
def tiny_source(tmp_path) -> Path:
    """Random 28x28 images in 3 classes: enough to exercise paths, not to learn."""
    rng = np.random.default_rng(0)
    return write_idx_source(
        tmp_path / "tiny",
        rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), np.arange(60, dtype=np.uint8) % 3,
        rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), np.arange(30, dtype=np.uint8) % 3,
    )


COLOURS = {"cats": (200, 60, 40), "dogs": (40, 90, 210), "birds": (60, 180, 60)}


def write_image(path: Path, colour, size=(40, 32), fmt=None, mode="RGB", seed=0) -> Path:
    """A small noisy image mostly of `colour`, so a model can tell the classes apart."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_image_folder(root: Path, splits=("train", "validation", "test"), classes=("cats", "dogs"), per_class=6) -> Path:
    """ROOT/SPLIT/CLASS/*.png, or ROOT/CLASS/*.png when `splits` is empty."""
    seed = 0
    for split in splits or ("",):
        for name in classes:
            for i in range(per_class):
                seed += 1
                write_image(root / split / name / f"{name}{i}.png", COLOURS[name], seed=seed)
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "pets")


@pytest.fixture(scope="session")
def shared_catsdogs() -> Path:
    path = shared_datasets() / "cats_and_dogs_small"
    if not (path / "train" / "cats").is_dir():
        missing_shared_data(f"the shared cats-vs-dogs set is not at {path}")
    return path


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """The synthetic Grad-CAM check: 2,000 training and 500 test images of a red square or a blue disk,
    and half as many again of background alone (a third class, so that each shape needs evidence of its own)."""
    from smallvision.data.shapes import write_shapes_folder

    return write_shapes_folder(tmp_path_factory.mktemp("shapes") / "shapes", train=2000, test=500, with_empty=True)


@pytest.fixture(scope="session")
def shapes_run(shapes_folder, tmp_path_factory):
    """small_convnet trained on the shapes with fast-mnist for 5 epochs (about 10 s), at the learning rate the
    figures were measured with (6e-3: at mnist_slim's 1.5e-2 small_convnet does not learn the background-only
    class in 5 epochs); see benchmarks/gradcam_shapes.py for other seeds and recipes."""
    import smallvision as sv

    out = tmp_path_factory.mktemp("runs") / "shapes"
    return sv.train(shapes_folder, "fast-mnist", out=out, model="small_convnet", epochs=5, learning_rate=0.006,
                    progress=False, val_split=0.0, cache_dir=tmp_path_factory.mktemp("cache"))  # the benchmark's set-up


@pytest.fixture(scope="session")
def runs_of_every_kind(mnist_slice, tmp_path_factory) -> dict:
    """One small run of each kind the earlier issues produce: the seed's MNIST network, the seed's
    cats-vs-dogs network (one sigmoid unit) on a folder, small_convnet, a frozen pretrained backbone,
    and a fine-tuned one."""
    import smallvision as sv

    base = tmp_path_factory.mktemp("kinds")
    pets = make_image_folder(base / "pets", per_class=12)
    options = dict(progress=False, cache_dir=base / "cache")
    return {
        "mnist": sv.train(mnist_slice, "seed-mnist", out=base / "mnist", epochs=1, **options),
        "sigmoid": sv.train(pets, "seed-catsdogs", out=base / "sigmoid", image_size=48, epochs=2, steps_per_epoch=2,
                            **options),  # not the recipe's 100 batches an epoch
        "small_convnet": sv.train(pets, "fast-mnist", out=base / "small_convnet", model="small_convnet", image_size=64,
                                  epochs=1, **options),  # not the shapes run, which takes longer to train
        "features": sv.train(pets, "catsdogs-features", out=base / "features", image_size=64, epochs=2, **options),
        "finetune": sv.train(pets, "catsdogs-finetune", out=base / "finetune", image_size=64, epochs=1,
                             fine_tune_epochs=1, **options),
    }
