"""Turn what the user typed (`mnist`, a directory) into a DataSource with its splits."""

from pathlib import Path

from smallvision.data.imageset import DataSource
from smallvision.data.imageset import stratified_split
from smallvision.data.mnist import is_idx_directory, load_idx_source, locate_mnist
from smallvision.errors import SmallvisionError, unknown_name

NAMED_SOURCES = ("mnist",)


def open_source(spec: str | Path, data_dir: str | Path | None = None, val_split: float = 0.0,
                seed: int = 0) -> DataSource:
    """The source `spec` names, with `val_split` of its training split held out when it has no validation split."""
    source = load_source(str(spec), data_dir)
    if val_split and source.validation is None:
        kept, held_out = stratified_split(source.train.labels, val_split, seed)
        source = DataSource(source.name, source.train.subset(kept), source.train.subset(held_out), source.test)
    return source


def load_source(spec: str, data_dir: str | Path | None) -> DataSource:
    if spec == "mnist":
        return load_idx_source(locate_mnist(data_dir), name="mnist")
    path = Path(spec)
    if path.is_dir():
        if is_idx_directory(path):
            return load_idx_source(path)
        raise SmallvisionError(f"{path}: no data source found here: expected the four MNIST-format IDX files "
                               f"(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...)")
    if path.exists():
        raise SmallvisionError(f"{path}: a source must be a directory or one of: {', '.join(NAMED_SOURCES)}")
    if "/" in spec or spec.startswith("."):
        raise SmallvisionError(f"{path}: no such directory")
    raise unknown_name("source", spec, list(NAMED_SOURCES))
