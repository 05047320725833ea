"""Digits from IDX files as a studio source (a folder with MNIST's four files, as `smallvision train DIR`
takes it): their counts, and each digit named and drawn by its split and index, since there is no file of
its own to show or move. Such a source is read, checked, audited and trained on; nothing in it is fixed
one photo at a time (the four files hold every digit)."""

import io
import re
import threading
from pathlib import Path

from smallvision.data.mnist import IDX_FILES, find_idx_file, is_idx_directory

NAMED = re.compile(r"(?:(?P<folder>.*)/)?(?P<split>train|test)#(?P<index>\d+)")
SCALE = 4  # a 28x28 digit drawn 112 pixels a side, its pixels kept sharp


def digit_name(base: str, split: str, index: int | str) -> str:
    """How the page names a digit: the source's path inside its root, its split and its index there."""
    return f"{base}/{split}#{index}" if base else f"{split}#{index}"


def parse_digit_name(name: str) -> tuple[str, str, int] | None:
    """(the source's path inside its root, split, index), or None for a name that is not a digit's."""
    found = NAMED.fullmatch(name)
    return (found["folder"] or "", found["split"], int(found["index"])) if found else None


class IdxSources:
    """The IDX sources read so far, each kept while its files are unchanged (paging through 60,000 digits
    reads them once)."""

    def __init__(self):
        self.read: dict[Path, tuple[tuple, object]] = {}
        self.lock = threading.Lock()

    @staticmethod
    def holds(folder: Path) -> bool:
        return is_idx_directory(folder)

    def source(self, folder: Path):
        from smallvision.data.mnist import load_idx_source

        stamp = tuple(find_idx_file(folder, stem).stat().st_mtime_ns for stem in IDX_FILES.values())
        with self.lock:
            if folder not in self.read or self.read[folder][0] != stamp:
                self.read[folder] = (stamp, load_idx_source(folder))
            return self.read[folder][1]

    def split(self, folder: Path, split: str):
        """The split's ImageSet (train or test), or None for another name."""
        source = self.source(folder)
        return {"train": source.train, "test": source.test}.get(split)

    def describe(self, folder: Path) -> dict:
        """Counts per split and class, as a folder of photos is described."""
        source = self.source(folder)
        splits = {"train": source.train, "test": source.test}
        counts = {split: dict(zip(images.class_names, images.class_counts())) for split, images in splits.items()}
        return {"layout": "idx", "classes": source.train.class_names, "counts": counts}

    def names(self, folder: Path, base: str, split: str, label: str) -> list[str]:
        """Every digit of one class in one split, by name."""
        images = self.split(folder, split)
        if images is None:
            return []
        index = images.class_names.index(label)
        return [digit_name(base, split, i) for i in (images.labels == index).nonzero().flatten().tolist()]

    def pixels(self, folder: Path, split: str, index: int):
        """One digit as uint8 [channels, height, width], or None past the split's end."""
        images = self.split(folder, split)
        return images.images[index] if images is not None and 0 <= index < len(images) else None

    def first_of_classes(self, folder: Path, count: int) -> list:
        """The first training digit of each of the first `count` classes (the augmentation preview's)."""
        train = self.source(folder).train
        return [train.images[int((train.labels == label).nonzero()[0])] for label in range(count)
                if (train.labels == label).any()]

    def png(self, folder: Path, split: str, index: int) -> bytes | None:
        from PIL import Image

        pixels = self.pixels(folder, split, index)
        if pixels is None:
            return None
        array = pixels.permute(1, 2, 0).numpy()
        image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        image = image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)
        out = io.BytesIO()
        image.save(out, "PNG")
        return out.getvalue()
