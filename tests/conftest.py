import os
from pathlib import Path

import numpy as np
import pytest

from smallvision.data.idx import read_idx, write_idx

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SMALLVISION_PROGRESS", "0")


def shared_datasets() -> Path:
    return Path(os.environ.get("SMALLVISION_DATA") or REPO.parent / "shared" / "datasets")


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    path = shared_datasets() / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the shared MNIST files are not at {path}")
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
