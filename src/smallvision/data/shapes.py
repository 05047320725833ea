"""A synthetic check for explanations: the class is a small shape (a red square or a blue disk) at a
random place on a noisy background, so the right answer to "where is the evidence?" is known.

`write_shapes_folder` writes it as an image folder (ROOT/train|test/CLASS/*.png) with ROOT/boxes.csv
giving each image's shape box, so it trains and explains through the same path as a user's photos.
"""

import csv
from pathlib import Path

import numpy as np

CLASS_NAMES = ("blue_disk", "red_square")
EMPTY = "background_only"
COLOURS = {"blue_disk": (40, 70, 230), "red_square": (230, 40, 40)}


def make_shapes(count: int, seed: int = 0, side: int = 64, shape_size: int = 12, classes=CLASS_NAMES):
    """(images uint8 [N, side, side, 3], labels [N] indexing `classes`, boxes [N, 4] as top, left, bottom,
    right, exclusive). Classes alternate; the background is uniform noise around mid grey; a class with no
    colour of its own (EMPTY) is the background alone, its box empty."""
    rng = np.random.default_rng(seed)
    images = rng.integers(30, 226, (count, side, side, 3), dtype=np.uint8)
    labels = np.arange(count) % len(classes)
    tops = rng.integers(0, side - shape_size + 1, count)
    lefts = rng.integers(0, side - shape_size + 1, count)
    rows, columns = np.mgrid[0:shape_size, 0:shape_size]
    centre = (shape_size - 1) / 2
    disk = (rows - centre) ** 2 + (columns - centre) ** 2 <= (shape_size / 2) ** 2
    masks = {"blue_disk": disk, "red_square": np.ones_like(disk)}
    sizes = np.zeros(count, dtype=int)
    for index, (image, label, top, left) in enumerate(zip(images, labels, tops, lefts)):
        name = classes[label]
        if name in masks:
            image[top:top + shape_size, left:left + shape_size][masks[name]] = COLOURS[name]
            sizes[index] = shape_size
    boxes = np.stack([tops, lefts, tops + sizes, lefts + sizes], axis=1)
    return images, labels, boxes


def write_shapes_folder(root: str | Path, train: int = 2000, test: int = 500, seed: int = 0,
                        with_empty: bool = False) -> Path:
    """ROOT/train/CLASS/*.png and ROOT/test/CLASS/*.png with `train` and `test` shape images, and
    ROOT/boxes.csv (image path relative to ROOT, top, left, bottom, right) for those. `with_empty` adds
    a third class, EMPTY, of as many background-only images as each shape has: then neither shape can be
    told by the other's absence, and each class needs evidence of its own (see docs/looking-inside.md)."""
    from PIL import Image

    root = Path(root)
    classes = (*CLASS_NAMES, EMPTY) if with_empty else CLASS_NAMES
    scale = len(classes) / len(CLASS_NAMES)
    rows = []
    for split, count, split_seed in (("train", train, seed), ("test", test, seed + 1)):
        images, labels, boxes = make_shapes(round(count * scale), split_seed, classes=classes)
        for index, (image, label, box) in enumerate(zip(images, labels, boxes)):
            relative = Path(split) / classes[label] / f"{index:05d}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / relative)
            if classes[label] != EMPTY:
                rows.append([relative.as_posix(), *box.tolist()])
    with open(root / "boxes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "top", "left", "bottom", "right"])
        writer.writerows(rows)
    return root


def read_boxes(root: str | Path) -> dict[str, tuple[int, int, int, int]]:
    """{image path relative to ROOT: (top, left, bottom, right)} from ROOT/boxes.csv."""
    with open(Path(root) / "boxes.csv", newline="") as handle:
        return {row["image"]: (int(row["top"]), int(row["left"]), int(row["bottom"]), int(row["right"]))
                for row in csv.DictReader(handle)}


def peak_inside_box(heatmaps, boxes) -> list[bool]:
    """For each heatmap [H, W] (at the image's size), whether its peak falls inside its box."""
    hits = []
    for heatmap, (top, left, bottom, right) in zip(heatmaps, boxes):
        row, column = divmod(int(heatmap.flatten().argmax()), heatmap.shape[1])
        hits.append(top <= row < bottom and left <= column < right)
    return hits
