"""MNIST-format sources: four IDX files in a directory, found locally or downloaded once."""

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch

from smallvision.data.cache import user_cache_dir
from smallvision.data.idx import read_idx
from smallvision.data.imageset import DataSource, ImageSet
from smallvision.errors import SmallvisionError
from smallvision.progress import progress_bar

# Split part -> the file's canonical stem; a directory may hold it raw or gzip-compressed.
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# md5 of the canonical .gz downloads; local files are not checked, only what we fetch.
CANONICAL_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def find_idx_file(directory: Path, stem: str) -> Path | None:
    # Some mirrors spell the stem with a dot before "idx" (train-images.idx3-ubyte).
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def is_idx_directory(directory: Path) -> bool:
    return all(find_idx_file(directory, stem) for stem in IDX_FILES.values())


def mnist_search_path(data_dir: str | Path | None) -> list[Path]:
    """Where `mnist` is looked for, in order: --data, $SMALLVISION_DATA/mnist, the user cache."""
    places = [Path(data_dir)] if data_dir else []
    if os.environ.get("SMALLVISION_DATA"):
        places.append(Path(os.environ["SMALLVISION_DATA"]) / "mnist")
    places.append(user_cache_dir() / "mnist")
    return places


def locate_mnist(data_dir: str | Path | None = None, mirrors=MIRRORS) -> Path:
    """A directory holding the four MNIST files, downloading them into the cache when none does."""
    places = mnist_search_path(data_dir)
    for place in places:
        if is_idx_directory(place):
            return place
    return download_mnist(places[-1], mirrors, searched=places)


def download_mnist(destination: Path, mirrors, searched: list[Path]) -> Path:
    try:
        destination.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SmallvisionError(f"cannot create {destination} to download MNIST into: {err.strerror}") from None
    for name, md5 in CANONICAL_MD5.items():
        if (destination / name).is_file():
            continue
        errors = []
        for mirror in mirrors:
            try:
                fetch_verified(mirror + name, destination / name, md5)
                break
            except (urllib.error.URLError, OSError, ValueError) as err:
                errors.append(f"{mirror}: {getattr(err, 'reason', err)}")
        else:
            looked = ", ".join(str(p) for p in searched)
            raise SmallvisionError(
                f"MNIST not found (looked in {looked}) and the download of {name} failed ({'; '.join(errors)}); "
                f"put the four files {', '.join(CANONICAL_MD5)} in one of those directories or pass --data DIR"
            )
    return destination


def fetch_verified(url: str, target: Path, md5: str) -> None:
    """Download `url` to `target` with a progress bar; keep it only when its md5 matches."""
    partial = target.with_suffix(target.suffix + ".part")
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with progress_bar(total=total, desc=f"download {target.name}", unit="B", unit_scale=True) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    if digest.hexdigest() != md5:
        partial.unlink()
        raise ValueError(f"checksum mismatch for {target.name}: got md5 {digest.hexdigest()}, expected {md5}")
    partial.rename(target)


def load_idx_source(directory: str | Path, name: str | None = None) -> DataSource:
    """A source from a directory of the four IDX files, class names from its optional classes.txt."""
    directory = Path(directory)
    missing = [stem for stem in IDX_FILES.values() if not find_idx_file(directory, stem)]
    if missing:
        raise SmallvisionError(f"{directory}: missing IDX files: {', '.join(missing)} (raw or .gz)")
    arrays = {key: read_idx(find_idx_file(directory, stem)) for key, stem in IDX_FILES.items()}
    class_names = read_class_names(directory, arrays)
    splits = {
        split: to_imageset(arrays[(split, "images")], arrays[(split, "labels")], class_names, directory, split)
        for split in ("train", "test")
    }
    return DataSource(name or directory.name, splits["train"], None, splits["test"])


def read_class_names(directory: Path, arrays: dict) -> list[str]:
    classes_file = directory / "classes.txt"
    if classes_file.is_file():
        names = [line.strip() for line in classes_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(names) < 2:
            raise SmallvisionError(f"{classes_file}: needs at least two class names, one per line")
        return names
    highest = max(int(arrays[(split, "labels")].max(initial=0)) for split in ("train", "test"))
    return [str(i) for i in range(highest + 1)]


def to_imageset(images, labels, class_names, directory: Path, split: str) -> ImageSet:
    where = f"{directory} ({split} split)"
    if images.ndim not in (3, 4):
        raise SmallvisionError(f"{where}: images must have 3 dimensions (count, rows, columns), found {images.ndim}")
    if labels.ndim != 1:
        raise SmallvisionError(f"{where}: labels must have 1 dimension, found {labels.ndim}")
    if images.dtype.itemsize != 1 or images.dtype.kind != "u":
        raise SmallvisionError(f"{where}: images must be unsigned bytes, found {images.dtype}")
    if len(images) != len(labels):
        raise SmallvisionError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        bad = int(labels.max()) if labels.max() >= len(class_names) else int(labels.min())
        raise SmallvisionError(f"{where}: label {bad} is out of range for {len(class_names)} classes (0..{len(class_names) - 1})")
    pixels = torch.from_numpy(images.copy())
    pixels = pixels.unsqueeze(1) if pixels.dim() == 3 else pixels.permute(0, 3, 1, 2).contiguous()
    return ImageSet(pixels, torch.from_numpy(labels.astype("int64")), class_names)
