"""Image-folder sources: ROOT/{train,validation,test}/CLASS/* or ROOT/CLASS/*, decoded once.

Class names are the class folders' names in sorted order and must be the same in every split.
Files that cannot be used (empty, truncated, not an image, too large) are skipped with a
reason; they never stop a run, but fewer than two classes with usable images does, before
any training is spent.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from smallvision.data.cache import decode_files
from smallvision.data.imageset import DataSource, ImageSet
from smallvision.errors import SmallvisionError
from smallvision.images import IMAGE_SUFFIXES

SPLIT_FOLDERS = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
                 "test": "test"}


class FolderProblem(SmallvisionError):
    """A folder that is there but cannot be trained on as it is laid out (no class folders, classes that differ
    between splits, ...): `train` refuses it as any bad input, `data check` reports it as its verdict (exit 1)."""


@dataclass
class FolderScan:
    """What is in an image folder, before anything is decoded: (relative path, label) pairs per split."""

    root: Path
    layout: str  # "splits" (ROOT/SPLIT/CLASS/*) or "classes" (ROOT/CLASS/*)
    class_names: list[str]
    files: dict[str, list[tuple[str, int]]]
    warnings: list[str] = field(default_factory=list)


def subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[str]:
    """Paths of files with an image suffix under `folder`, at any depth, sorted (hidden ones left out)."""
    found = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        found += [os.path.join(directory, n) for n in names
                  if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return sorted(found)


def is_image_folder(root: Path) -> bool:
    return root.is_dir() and bool(subfolders(root))


def scan_folder(root: Path) -> FolderScan:
    """Detect the layout and list every image file with its class, checking the classes agree across splits."""
    if not root.is_dir():
        raise SmallvisionError(f"{root}: no such directory")
    folders = subfolders(root)
    split_folders = [f for f in folders if f.name.lower() in SPLIT_FOLDERS]
    if not split_folders:
        if not folders:
            raise FolderProblem(f"{root}: no class folders inside; an image folder is ROOT/CLASS/*.jpg "
                                f"or ROOT/train/CLASS/*.jpg (with validation/ and test/ beside train/)")
        scan = FolderScan(root, "classes", [f.name for f in folders], {})
        scan.files["train"] = list_classes(root, root, scan)
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            scan.warnings.append(f"{root}: {len(loose)} image files directly in the folder, outside any class "
                                 f"folder, were left out (e.g. {loose[0].name})")
        return scan

    by_split: dict[str, Path] = {}
    for folder in split_folders:
        split = SPLIT_FOLDERS[folder.name.lower()]
        if split in by_split:
            raise FolderProblem(f"{root}: both {by_split[split].name}/ and {folder.name}/ are there; "
                                f"keep one {split} folder")
        by_split[split] = folder
    if "train" not in by_split:
        raise FolderProblem(f"{root}: has {', '.join(f.name + '/' for f in split_folders)} but no train/ folder")
    class_names = [f.name for f in subfolders(by_split["train"])]
    if not class_names:
        raise FolderProblem(f"{by_split['train']}: no class folders inside (expected train/CLASS/*.jpg)")
    scan = FolderScan(root, "splits", class_names, {})
    for split in ("train", "validation", "test"):
        if split not in by_split:
            continue
        folder = by_split[split]
        found = [f.name for f in subfolders(folder)]
        if found != class_names:
            missing = sorted(set(class_names) - set(found))
            extra = sorted(set(found) - set(class_names))
            what = "; ".join(filter(None, [f"missing {missing}" if missing else "",
                                           f"has extra {extra}" if extra else ""]))
            raise FolderProblem(f"{folder}: its class folders differ from train/'s: {what}. "
                                f"Every split needs the same class folders")
        scan.files[split] = list_classes(root, folder, scan)
    others = [f.name for f in folders if f not in split_folders]
    if others:
        scan.warnings.append(f"{root}: folders {others} are not train/, validation/ or test/ and were left out")
    return scan


def list_classes(root: Path, split_folder: Path, scan: FolderScan) -> list[tuple[str, int]]:
    pairs = []
    for label, name in enumerate(scan.class_names):
        files = image_files(split_folder / name)
        if not files:
            scan.warnings.append(f"{split_folder / name}: empty class folder (no image files)")
        pairs += [(os.path.relpath(p, root), label) for p in files]
    return pairs


def load_image_folder(root: str | Path, shape: tuple[int, int, int], cache_dir: str | Path | None = None,
                      progress: bool = True, scan: FolderScan | None = None) -> DataSource:
    """Every split of the folder at `shape` (channels, height, width), through the decode cache; the files
    of `scan` where given (the studio's listing, which leaves out links out of its roots), else all."""
    root = Path(root)
    scan = scan or scan_folder(root)
    ordered = [(split, path, label) for split, pairs in scan.files.items() for path, label in pairs]
    records, pixels, stats = decode_files(root, [path for _, path, _ in ordered], shape, cache_dir, progress)
    source = DataSource(root.name or str(root), None, root=str(root), layout=scan.layout, warnings=list(scan.warnings),
                        files=[(split, record) for (split, _, _), record in zip(ordered, records)])
    if stats.cache_warning:
        source.warnings.append(stats.cache_warning)
    source.mapped = not pixels.untyped_storage().resizable()  # a view of the memory-mapped cache
    kept: dict[str, list[tuple[str, int]]] = {split: [] for split in scan.files}
    for (split, path, label), record in zip(ordered, records):
        if record.usable:
            kept[split].append((path, label))
        else:
            source.skipped.append((path, record.reason))
    start = 0  # usable files come back in the order given, so each split is one run of rows
    for split, members in kept.items():
        labels = torch.tensor([label for _, label in members], dtype=torch.long)
        images = pixels[start:start + len(members)]
        setattr(source, split, ImageSet(images, labels, scan.class_names, [p for p, _ in members]))
        start += len(members)
    if source.skipped:
        first = ", ".join(f"{p} ({reason})" for p, reason in source.skipped[:3])
        more = f" and {len(source.skipped) - 3} more" if len(source.skipped) > 3 else ""
        source.warnings.append(f"skipped {len(source.skipped)} unusable file{'s' if len(source.skipped) > 1 else ''}: "
                               f"{first}{more}")
    return source
