"""`smallvision data check`: what is in a source and whether it can be trained on, before any training."""

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from smallvision.data.cache import data_path
from smallvision.data.folders import load_image_folder
from smallvision.data.imageset import DataSource
from smallvision.data.sources import leave_out_empty_classes, load_source, training_problem

IMBALANCE_RATIO = 1.5  # largest class over smallest, in train, above which we warn


@dataclass
class DataReport:
    source: DataSource
    problem: str | None = None
    duplicates: list[list[tuple[str, str]]] = field(default_factory=list)  # groups of (split, path), same bytes
    warnings: list[str] = field(default_factory=list)
    data_path: str = ""  # in memory or from the memory-mapped cache, and why

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_source(spec: str, image_shape: tuple[int, int, int], data_dir=None, cache_dir=None,
                 progress: bool = True, memory_budget: str = "auto", scan=None) -> DataReport:
    """What `data check` says of the source; `scan`: a folder's listing to check instead of all its files
    (the studio's, without links out of its roots)."""
    if scan is not None:
        source = load_image_folder(spec, image_shape, cache_dir, progress, scan=scan)
    else:
        source = load_source(str(spec), data_dir, image_shape, cache_dir, progress)
    leave_out_empty_classes(source)  # as train does, so both say the same of the same folder
    report = DataReport(source, training_problem(source))
    if source.mapped:  # the path training will take on this machine's CPU, as train decides it
        pixels = sum(split.pixel_count for split in source.splits().values())
        report.data_path = data_path(pixels, memory_budget)[1]
    report.warnings = list(source.warnings)
    report.duplicates = duplicate_groups(source)
    crossing = [group for group in report.duplicates if len({split for split, _ in group}) > 1]
    if crossing:
        report.warnings.append(f"{len(crossing)} file{'s are' if len(crossing) > 1 else ' is'} in more than one split with the same content "
                               f"(a test image the model trained on inflates its score)")
    warning = imbalance_warning(source.train.class_counts() if source.train is not None else [])
    if warning:
        report.warnings.append(warning)
    return report


def imbalance_warning(train_counts) -> str | None:
    """The line `data check` (and the studio's card) says when the largest training class is more than
    IMBALANCE_RATIO times the smallest (empty classes aside), or None."""
    counts = [count for count in train_counts if count]
    if len(counts) >= 2 and max(counts) > IMBALANCE_RATIO * min(counts):
        return (f"classes are imbalanced in train: the largest has {max(counts):,} images, the smallest "
                f"{min(counts):,} ({max(counts) / min(counts):.1f}x); accuracy alone will flatter a model that "
                f"favours the large ones")
    return None


def plot_class_samples(source: DataSource, path: str | Path, per_class: int = 8, seed: int = 0) -> Path:
    """A row per class of `per_class` training images drawn at random, as training will see them
    (decoded and resized): the quickest way to spot a mislabelled or odd class."""
    from smallvision.plots import plot_image_grid  # matplotlib is slow to import

    images = source.train
    generator = torch.Generator().manual_seed(seed)
    cells, titles = [], []
    for label, name in enumerate(source.class_names):
        members = (images.labels == label).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=generator)[:per_class]]
        cells += list(images.take(chosen)) + [None] * (per_class - len(chosen))
        titles += [name if column == 0 else "" for column in range(per_class)]
    path = Path(path)
    plot_image_grid(cells, titles, path, title=f"{source.root or source.name}: {per_class} training images per class "
                    f"(a row each), as decoded for training", columns=per_class)
    return path


def duplicate_groups(source: DataSource) -> list[list[tuple[str, str]]]:
    """Files with exactly the same content, grouped, within and across splits."""
    by_hash = defaultdict(list)
    for split, record in source.files:
        if record.sha1:
            by_hash[record.sha1].append((split, record.path))
    return [group for group in by_hash.values() if len(group) > 1]


def format_report(report: DataReport) -> str:
    source = report.source
    lines = [f"source: {source.root or source.name}" + (f"  (layout: {describe_layout(source.layout)})" if source.layout else "")]
    splits = source.splits()
    names = source.class_names
    width = max([len("class")] + [len(n) for n in names])
    lines.append("")
    lines.append(f"{'class':<{width}}" + "".join(f"{split:>12}" for split in splits))
    per_split = {split: images.class_counts() for split, images in splits.items()}
    for i, name in enumerate(names):
        lines.append(f"{name:<{width}}" + "".join(f"{per_split[split][i]:>12,}" for split in splits))
    lines.append(f"{'total':<{width}}" + "".join(f"{len(images):>12,}" for images in splits.values()))
    lines += image_statistics(source)
    if source.skipped:
        lines += ["", f"skipped files ({len(source.skipped)}):"]
        lines += [f"  {path}: {reason}" for path, reason in source.skipped]
    if report.duplicates:
        lines += ["", f"exact duplicates ({len(report.duplicates)} group{'s' if len(report.duplicates) > 1 else ''} of files with the same content):"]
        for group in report.duplicates[:20]:
            lines.append("  " + "  =  ".join(f"{split}:{path}" for split, path in group))
        if len(report.duplicates) > 20:
            lines.append(f"  ... and {len(report.duplicates) - 20} more groups")
    if report.warnings:
        lines += [""] + [f"warning: {w}" for w in report.warnings]
    if report.data_path:
        lines += ["", f"training: {report.data_path}"]
    lines += ["", f"cannot train: {report.problem}" if report.problem else "ready to train"]
    lines.append(f"photos in the wrong folder, near-duplicates and leaks, outliers: smallvision data audit "
                 f"{source.root or source.name}")
    return "\n".join(lines)


def describe_layout(layout: str) -> str:
    return {"splits": "train/validation/test folders", "classes": "one folder per class; train splits it by "
            "--val-split and --test-split"}.get(layout, layout)


def image_statistics(source: DataSource) -> list[str]:
    """Sizes, modes and formats of the files as they are on disk (before resizing)."""
    usable = [record for _, record in source.files if record.usable]
    if not usable:
        return []
    widths = [r.width for r in usable]
    heights = [r.height for r in usable]
    sizes = Counter(f"{r.width}x{r.height}" for r in usable)
    modes = Counter(r.mode for r in usable)
    formats = Counter(r.format for r in usable)

    def listing(counter: Counter) -> str:
        return ", ".join(f"{key} {count:,}" for key, count in counter.most_common(5))

    size_line = (f"image size: width {min(widths)}-{max(widths)} (median {statistics.median(widths):g}), "
                 f"height {min(heights)}-{max(heights)} (median {statistics.median(heights):g}); "
                 f"most common: {listing(sizes)}")
    return ["", size_line, f"modes: {listing(modes)}", f"formats: {listing(formats)}"]
