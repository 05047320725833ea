"""ImageSet: one split of a data set, held as uint8 tensors."""

from dataclasses import dataclass, field

import torch

from smallvision.errors import SmallvisionError


@dataclass
class ImageSet:
    """`images` uint8 [N, C, H, W], `labels` int64 [N], the names of the classes, and for images
    read from files, each one's path (relative to the source's folder)."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    paths: list[str] | None = None

    def __post_init__(self):
        # float32 [N, D, 1, 1] stands for a frozen backbone's features of the images (feature extraction)
        if self.images.dtype not in (torch.uint8, torch.float32) or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W] (or float32 features [N, D, 1, 1]), "
                             f"got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if self.paths is not None and len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        paths = None if self.paths is None else [self.paths[i] for i in indices.tolist()]
        return ImageSet(self.images[indices], self.labels[indices], self.class_names, paths)

    def to(self, device: torch.device | str) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device), self.class_names, self.paths)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()


@dataclass
class DataSource:
    """A named data set with its splits; `validation` and `test` may be absent.

    Sources read from files also say where they are (`root`), how they were laid out, which files
    could not be used and why (`skipped`: (path, reason) pairs), and what the user should know (`warnings`).
    """

    name: str
    train: ImageSet | None
    validation: ImageSet | None = None
    test: ImageSet | None = None
    root: str | None = None
    layout: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # (split, FileRecord) for every file seen, usable or not: what `data check` reports on
    files: list = field(default_factory=list)
    # the splits' pixels are views of the memory-mapped decode cache (data/cache.py), not in memory
    mapped: bool = False

    @property
    def class_names(self) -> list[str]:
        first = next(s for s in (self.train, self.validation, self.test) if s is not None)
        return first.class_names

    def splits(self) -> dict[str, ImageSet]:
        """The splits present, by name, in the order train, validation, test."""
        return {n: s for n, s in (("train", self.train), ("validation", self.validation), ("test", self.test))
                if s is not None}

    def split(self, name: str) -> ImageSet:
        found = {"train": self.train, "validation": self.validation, "val": self.validation, "test": self.test}.get(name)
        if found is None:
            raise SmallvisionError(f"source {self.name!r} has no {name!r} split; it has: {', '.join(self.splits())}")
        return found


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held_out) with `fraction` of every class held out, chosen by `seed`; a class
    of two or more images always has at least one on each side, however small the fraction."""
    if not 0.0 < fraction < 1.0:
        raise SmallvisionError(f"a split fraction must be between 0 and 1, got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    kept, held_out = [], []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_out = round(fraction * len(members))
        if len(members) >= 2:
            n_out = min(max(n_out, 1), len(members) - 1)
        held_out.append(members[:n_out])
        kept.append(members[n_out:])
    return torch.cat(kept).sort().values, torch.cat(held_out).sort().values

