"""ImageSet: one split of a data set, held as uint8 tensors."""

from dataclasses import dataclass, field

import numpy as np
import torch

from smallvision.errors import SmallvisionError


class ImageSet:
    """One split: uint8 images [N, C, H, W], int64 labels [N], the names of the classes, and for images
    read from files, each one's path (relative to the source's folder).

    A split of a folder past the memory budget stays a view of the memory-mapped decode cache: `store`
    holds the cache's records and `rows` (when not None) says which of them are this split, in order, so
    a held-out split is chosen by index, not copied. `images` is the whole split as one tensor (a copy,
    for a split chosen by rows); `take`, `chunks` and `shape` read only what they are asked for."""

    DTYPE, LAYOUT = torch.uint8, "[N, C, H, W]"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                 paths: list[str] | None = None, rows: torch.Tensor | None = None):
        if images.dtype != self.DTYPE or images.dim() != 4:
            raise ValueError(f"{type(self).__name__} holds {self.DTYPE} {self.LAYOUT}, got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(images if rows is None else rows) != len(labels):
            raise ValueError(f"{len(images if rows is None else rows)} images but {len(labels)} labels")
        if paths is not None and len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.store, self.rows, self.labels, self.class_names, self.paths = images, rows, labels, class_names, paths

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ImageSet({len(self)} x {tuple(self.shape[1:])}, {self.num_classes} classes{', mapped' if self.mapped else ''})"

    @property
    def images(self) -> torch.Tensor:
        return self.store if self.rows is None else self.store[self.rows]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.store.shape[1:])

    @property
    def pixel_count(self) -> int:
        return len(self) * self.store[0].numel() if len(self.store) else 0

    @property
    def mapped(self) -> bool:
        """Whether the pixels are a view of the memory-mapped decode cache (data/cache.py), not in memory."""
        return not self.store.untyped_storage().resizable()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def take(self, indices: torch.Tensor, one_thread: bool = False) -> torch.Tensor:
        """The images at these positions of the split (reading only their records when mapped). With
        `one_thread`, copied on the calling thread alone: for a reader in the background, where torch
        would start a thread team of its own to fight the training step for the cores (numpy's take: the
        streamed big folder trained 1.07x faster with it here)."""
        indices = indices.to(self.store.device) if self.rows is None else self.rows[indices.to(self.rows.device)]
        if one_thread and self.store.device.type == "cpu":
            return torch.from_numpy(np.take(self.store.numpy(), indices.numpy(), axis=0))
        return self.store.index_select(0, indices)  # whole rows copied (indexing with `[]` went pixel by pixel)

    def chunks(self, size: int):
        """(start, images) for consecutive pieces of at most `size` images: a mapped split is never whole
        in memory."""
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            yield start, (self.store[start:stop] if self.rows is None else self.store[self.rows[start:stop]])

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        """The images at `indices`: copied from memory, or, from the mapped cache, a view by rows."""
        paths = None if self.paths is None else [self.paths[i] for i in indices.tolist()]
        if self.mapped:
            rows = indices if self.rows is None else self.rows[indices]
            return type(self)(self.store, self.labels[indices], self.class_names, paths, rows)
        return type(self)(self.take(indices), self.labels[indices], self.class_names, paths)

    def relabelled(self, labels: torch.Tensor, class_names: list[str]) -> "ImageSet":
        return type(self)(self.store, labels, class_names, self.paths, self.rows)

    def in_memory(self) -> "ImageSet":
        """The split copied into memory (a mapped one is read whole, once)."""
        images = self.store.clone() if self.rows is None else self.store[self.rows]
        return type(self)(images, self.labels, self.class_names, self.paths)

    def to(self, device: torch.device | str) -> "ImageSet":
        return type(self)(self.images.to(device), self.labels.to(device), self.class_names, self.paths)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()


class Features(ImageSet):
    """A frozen backbone's features of a split's images, float32 [N, D, 1, 1], with their labels: what the
    head trains on in feature extraction. Not images: nothing augments or normalises them, and the training
    loop takes them as they are (a 1x1 map per feature)."""

    DTYPE, LAYOUT = torch.float32, "[N, D, 1, 1]"


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

