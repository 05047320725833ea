"""Turn what the user typed (`mnist`, a directory) into a DataSource with its splits."""

import hashlib
from pathlib import Path

import torch

from smallvision.data.cache import CACHE_FORMAT, RESIZE, release_pages
from smallvision.data.folders import FolderProblem, image_files, is_image_folder, load_image_folder
from smallvision.data.imageset import DataSource, ImageSet, stratified_split
from smallvision.data.mnist import is_idx_directory, load_idx_source, locate_mnist
from smallvision.errors import SmallvisionError, unknown_name

NAMED_SOURCES = ("mnist",)


def open_source(spec: str | Path, data_dir: str | Path | None = None, val_split: float = 0.0, seed: int = 0,
                test_split: float = 0.0, image_shape: tuple[int, int, int] | None = None,
                cache_dir: str | Path | None = None, progress: bool = False, for_training: bool = True) -> DataSource:
    """The source `spec` names, ready to train on (checked for that unless `for_training` is False).

    Image folders are decoded at `image_shape` (channels, height, width). A source without a test
    split gets `test_split` of its images held out as one, then one without a validation split gets
    `val_split` of what is left: both stratified by class and chosen by `seed`.
    """
    source = load_source(str(spec), data_dir, image_shape, cache_dir, progress)
    leave_out_empty_classes(source)
    for split in ("validation", "test"):
        if getattr(source, split) is not None and len(getattr(source, split)) == 0:  # every file in it unusable
            setattr(source, split, None)
            source.warnings.append(f"{source.root or source.name}: the {split} split has no usable images; "
                                   f"the run goes on without it")
    if test_split and source.test is None:
        source.train, source.test = hold_out(source, test_split, seed, "test")
    if val_split and source.validation is None:
        source.train, source.validation = hold_out(source, val_split, seed, "validation")
    problem = training_problem(source) if for_training else None
    if problem:
        raise SmallvisionError(problem)
    return source


def hold_out(source: DataSource, fraction: float, seed: int, split: str) -> tuple[ImageSet, ImageSet]:
    """(the rest of train, `fraction` of each class of train held out as `split`)."""
    kept, held_out = stratified_split(source.train.labels, fraction, seed)
    if len(held_out) == 0:
        raise SmallvisionError(f"{source.root or source.name}: too few training images to hold out a {split} split "
                               f"(no class has two); add images, or pass --{'val' if split == 'validation' else split}"
                               f"-split 0")
    return source.train.subset(kept), source.train.subset(held_out)


def load_source(spec: str, data_dir: str | Path | None, image_shape: tuple[int, int, int] | None = None,
                cache_dir: str | Path | None = None, progress: bool = False) -> DataSource:
    if spec == "mnist":
        return load_idx_source(locate_mnist(data_dir), name="mnist")
    path = Path(spec)
    if path.is_dir():
        if is_idx_directory(path):
            return load_idx_source(path)
        if is_image_folder(path):
            if image_shape is None:
                raise SmallvisionError(f"{path}: an image folder needs an image size to decode to: give "
                                       f"--image-size, or start the layers with Input(shape=(height, width, 3))")
            return load_image_folder(path, image_shape, cache_dir, progress)
        loose = len(image_files(path))
        if loose:  # the usual first mistake: every image in one folder, the classes not separated
            raise FolderProblem(f"{path}: {loose} image(s) but no class folders: put each class's images in a "
                                f"folder named after it ({path}/CLASS_NAME/*.jpg), one folder per class")
        raise FolderProblem(f"{path}: no data source found here: expected class folders (ROOT/CLASS/*.jpg or "
                            f"ROOT/train/CLASS/*.jpg) or the four MNIST-format IDX files")
    if path.exists():
        raise SmallvisionError(f"{path}: a source must be a directory or one of: {', '.join(NAMED_SOURCES)}")
    if "/" in spec or spec.startswith("."):
        raise SmallvisionError(f"{path}: no such directory")
    raise unknown_name("source", spec, list(NAMED_SOURCES))


def is_photo_folder(spec: str | Path) -> bool:
    """Whether `spec` names a folder of image files (rather than `mnist` or IDX files)."""
    path = Path(spec)
    return str(spec) not in NAMED_SOURCES and is_image_folder(path) and not is_idx_directory(path)


def leave_out_empty_classes(source: DataSource) -> None:
    """Take the classes without a usable training image out of every split of `source`, with a warning
    naming each: a class the network never sees only makes a wrong output layer (three classes where
    the data has two), and a stray empty folder is the usual cause. `train` and `data check` both call
    this, so they say the same thing about the same folder."""
    if source.train is None or len(source.train) == 0:
        return
    counts, names = source.train.class_counts(), source.class_names
    kept = [index for index, count in enumerate(counts) if count]
    empty = [index for index, count in enumerate(counts) if not count]
    if not empty:
        return
    new_label = torch.full((len(counts),), -1, dtype=torch.long)
    new_label[kept] = torch.arange(len(kept))
    elsewhere = {}  # class -> its images in validation and test, left out with it
    for split, images in source.splits().items():
        labels = images.labels.cpu()
        for index in empty:
            if int((labels == index).sum()):
                elsewhere.setdefault(index, []).append(f"{int((labels == index).sum())} {split}")
        subset = images.subset(torch.nonzero(new_label[labels] >= 0).flatten())
        setattr(source, split, subset.relabelled(new_label[subset.labels.cpu()].to(subset.labels.device),
                                                 [names[index] for index in kept]))
    for index in reversed(empty):
        also = f" (and its {' and '.join(elsewhere[index])} images)" if index in elsewhere else ""
        source.warnings.insert(0, f"class {names[index]!r} has no usable training images: it is left out of the "
                                  f"run{also}; the network learns the other {len(kept)}")


FINGERPRINT_KIND = 2  # 2: a folder's split by its files' content hashes; 1: by its pixels


def split_fingerprints(source: DataSource, by_pixels: bool = False) -> dict[str, str]:
    """A hash of each split's content and labels: a resumed run checks that it trains on the same data,
    and a frozen backbone's cached features are found by it. A folder's split is hashed by its files'
    SHA-1s, which the decode cache keeps, with the size and resize rule they were decoded at: no pixel is
    read, however big the folder. Digits from IDX files (and `by_pixels`) hash the pixels, a chunk at a time."""
    hashes = {record.path: record.sha1 for _, record in source.files}
    prints = {}
    for split, images in source.splits().items():
        digest = hashlib.blake2b(digest_size=16)
        if not by_pixels and images.paths is not None and all(hashes.get(path) for path in images.paths):
            digest.update(repr(("files", tuple(images.shape[1:]), RESIZE, CACHE_FORMAT)).encode())
            for path in images.paths:
                digest.update(hashes[path].encode())
        else:
            for start, chunk in images.chunks(1024):  # a mapped split is never copied whole
                digest.update(chunk.contiguous().numpy().tobytes())
                if start % (4 * 1024) == 0:
                    release_pages()  # nor does it stay resident once read
            release_pages()
        digest.update(images.labels.contiguous().numpy().tobytes())
        prints[split] = digest.hexdigest()
    return prints


def training_problem(source: DataSource) -> str | None:
    """Why training on `source` would fail, or None."""
    if source.train is None or len(source.train) == 0:
        return f"{source.root or source.name}: no usable training images"
    counts = source.train.class_counts()
    usable = sum(1 for c in counts if c)
    if usable < 2:
        listed = ", ".join(f"{n}: {c}" for n, c in zip(source.class_names, counts))
        return (f"{source.root or source.name}: {usable} class{'es' if usable != 1 else ''} with usable training "
                f"images ({listed}); a classifier needs at least two. Put each class's images in its own folder")
    return None


def source_spec(source) -> str:
    """The source as --resume finds it again from any directory: a path made absolute, a name as it is."""
    return str(Path(source).resolve()) if Path(str(source)).exists() else str(source)
