"""The studio's augmentation: a recipe's `augment` group with the page's changes, and the preview the page
shows as the switches move (a few of the source's training photos, each beside augmented copies of itself,
drawn by augment.py's own batch transform: what training will see, not a look-alike)."""

import io

from smallvision.errors import SmallvisionError
from smallvision.recipe import Augment, Recipe

PREVIEW_PHOTOS = 2  # rows: the first training photo of each of the first classes
PREVIEW_COPIES = 5  # augmented copies beside each original
PREVIEW_SIZE = 160  # pixels a side when the recipe does not say its own (digits from IDX files)
GAP = 4  # pixels between tiles
SMALLEST = 112  # tiles smaller than this are drawn a whole number of times larger


def with_augment(recipe: Recipe, changes: dict | None) -> Recipe:
    """The recipe with the page's augment fields over its own (None: as it is): Recipe.replace checks them,
    so a misspelt field or a value out of range is the recipe's own message."""
    return recipe.replace(augment=changes) if changes else recipe


def preview_png(originals: list, augment: Augment, seed: int = 0) -> bytes:
    """PNG: a row per original (uint8 [channels, height, width], all one size, as training decodes them) and
    PREVIEW_COPIES augmented copies beside it (with no augmentation on, the copies are the original again:
    what training would see)."""
    import torch
    from PIL import Image

    from smallvision.augment import augment_batch

    if not originals:
        raise SmallvisionError("no training photo to preview the augmentation on")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for original in originals:
        copies = original.expand(PREVIEW_COPIES, -1, -1, -1)
        augmented = augment_batch(augment, copies, generator) if augment.active else copies.float()
        rows.append(torch.cat([original[None].float(), augmented]).round().clamp(0, 255).to(torch.uint8))
    tiles = torch.stack(rows).expand(-1, -1, 3, -1, -1)  # [originals, 1 + copies, RGB, height, width]
    zoom = max(1, SMALLEST // tiles.shape[-1])  # a 28x28 digit drawn 4x, its pixels kept sharp
    if zoom > 1:
        tiles = tiles.repeat_interleave(zoom, dim=-1).repeat_interleave(zoom, dim=-2)
    down, across, _, height, width = tiles.shape
    sheet = Image.new("RGB", (across * width + (across - 1) * GAP, down * height + (down - 1) * GAP), "white")
    for row in range(down):
        for column in range(across):
            tile = Image.fromarray(tiles[row, column].permute(1, 2, 0).contiguous().numpy())
            sheet.paste(tile, (column * (width + GAP), row * (height + GAP)))
    out = io.BytesIO()
    sheet.save(out, "PNG")
    return out.getvalue()
