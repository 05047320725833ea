"""ImageSet: one split of a data set, held as uint8 tensors."""

from dataclasses import dataclass

import torch

from smallvision.errors import SmallvisionError


@dataclass
class ImageSet:
    """`images` uint8 [N, C, H, W], `labels` int64 [N], and the names of the classes."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.class_names)

    def to(self, device: torch.device | str) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device), self.class_names)


@dataclass
class DataSource:
    """A named data set with its splits; `validation` and `test` may be absent."""

    name: str
    train: ImageSet | None
    validation: ImageSet | None = None
    test: ImageSet | None = None

    @property
    def class_names(self) -> list[str]:
        first = next(s for s in (self.train, self.validation, self.test) if s is not None)
        return first.class_names

    def split(self, name: str) -> ImageSet:
        found = {"train": self.train, "validation": self.validation, "val": self.validation, "test": self.test}.get(name)
        if found is None:
            present = [n for n in ("train", "validation", "test") if getattr(self, n) is not None]
            raise SmallvisionError(f"source {self.name!r} has no {name!r} split; it has: {', '.join(present)}")
        return found


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held_out) with `fraction` of every class held out, chosen by `seed`."""
    if not 0.0 < fraction < 1.0:
        raise SmallvisionError(f"a split fraction must be between 0 and 1, got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    kept, held_out = [], []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_out = int(round(fraction * len(members)))
        held_out.append(members[:n_out])
        kept.append(members[n_out:])
    return torch.cat(kept).sort().values, torch.cat(held_out).sort().values

