"""`augment preview`: one training image and a grid of its augmented versions, as the seed's figure."""

from pathlib import Path

import torch

from smallvision.augment import augment_batch
from smallvision.data.sources import load_source
from smallvision.errors import SmallvisionError
from smallvision.recipe import Recipe, load_recipe
from smallvision.workflow import recipe_image_shape


def preview_augmentation(source: str | Path, recipe: str | Path | Recipe, out: str | Path, index: int = 0,
                         count: int = 11, seed: int = 0, data_dir=None, cache_dir=None) -> Path:
    """Write the picture to `out` and return its path."""
    from smallvision.plots import plot_image_grid  # matplotlib is slow to import

    recipe = load_recipe(recipe)
    augment = recipe.augment
    if not augment.active:
        raise SmallvisionError(f"recipe {recipe.name!r} has no augmentation to preview; "
                               f"try --recipe seed-catsdogs-augment, or --recipe a .toml file that sets some")
    if count < 1:
        raise SmallvisionError(f"--count must be at least 1, got {count}")
    train = load_source(str(source), data_dir, recipe_image_shape(recipe), cache_dir).train
    if train is None or not 0 <= index < len(train):
        raise SmallvisionError(f"{source}: no training image number {index} (it has {0 if train is None else len(train)})")
    original = train.take(torch.tensor([index]))
    generator = torch.Generator().manual_seed(seed)
    augmented = augment_batch(augment, original.expand(count, -1, -1, -1), generator)
    name = train.paths[index] if train.paths else f"image {index}"
    label = train.class_names[int(train.labels[index])]
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise SmallvisionError(f"{out.parent}: no such directory for the picture")
    plot_image_grid(torch.cat([original.float(), augmented]), ["original"] + [f"augmented {i + 1}" for i in range(count)],
                    out, title=f"{name} ({label})\n{recipe.name}: {augment.describe()}")
    return out
