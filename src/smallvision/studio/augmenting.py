"""The studio's augmentation: a recipe's `augment` group with the page's changes, and the preview the page
shows as the switches move (a few of the source's training photos, each beside augmented copies of itself,
drawn by augment.py's own batch transform: what training will see, not a look-alike)."""

import io
from pathlib import Path

from smallvision.errors import SmallvisionError
from smallvision.recipe import Augment, Recipe

PREVIEW_PHOTOS = 2  # rows: the first training photo of each of the first classes
PREVIEW_COPIES = 5  # augmented copies beside each original
PREVIEW_SIZE = 160  # pixels a side when the recipe does not say its own (digits from IDX files)
GAP = 4  # pixels between tiles


def with_augment(recipe: Recipe, changes: dict | None) -> Recipe:
    """The recipe with the page's augment fields over its own (None: as it is): Recipe.replace checks them,
    so a misspelt field or a value out of range is the recipe's own message."""
    return recipe.replace(augment=changes) if changes else recipe


def preview_png(photos: list[Path], augment: Augment, size: int, seed: int = 0) -> bytes:
    """PNG: a row per photo, the photo as training decodes it at `size` and then PREVIEW_COPIES augmented
    copies (with no augmentation on, the copies are the photo again: what training would see)."""
    import torch
    from PIL import Image

    from smallvision.augment import augment_batch
    from smallvision.images import load_image

    if not photos:
        raise SmallvisionError("no training photo to preview the augmentation on")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for photo in photos:
        original = load_image(photo, 3, size, size)
        copies = original.expand(PREVIEW_COPIES, -1, -1, -1)
        augmented = augment_batch(augment, copies, generator) if augment.active else copies.float()
        rows.append(torch.cat([original[None].float(), augmented]).round().clamp(0, 255).to(torch.uint8))
    tiles = torch.stack(rows)  # [photos, 1 + copies, 3, size, size]
    across, down = tiles.shape[1], tiles.shape[0]
    sheet = Image.new("RGB", (across * size + (across - 1) * GAP, down * size + (down - 1) * GAP), "white")
    for row in range(down):
        for column in range(across):
            tile = Image.fromarray(tiles[row, column].permute(1, 2, 0).numpy())
            sheet.paste(tile, (column * (size + GAP), row * (size + GAP)))
    out = io.BytesIO()
    sheet.save(out, "PNG")
    return out.getvalue()
