"""`augment preview`: one training image and a grid of its augmented versions, as the seed's figure."""

from pathlib import Path

import torch

from smallvision.augment import augment_batch
from smallvision.data.sources import NAMED_SOURCES, load_source
from smallvision.errors import SmallvisionError
from smallvision.recipe import Recipe, load_recipe
from smallvision.run import writable_directory
from smallvision.models import recipe_image_shape
from smallvision.workflow import default_recipe


def preview_augmentation(source: str | Path, recipe: str | Path | Recipe | None, out: str | Path, index: int = 0,
                         count: int = 11, seed: int = 0, data_dir=None, cache_dir=None) -> Path:
    """Write the picture to `out` (its folder made if need be) and return its path. Without a recipe, the one
    `train` uses for the source without one (workflow.default_recipe)."""
    from smallvision.plots import plot_image_grid  # matplotlib is slow to import

    if str(source) not in NAMED_SOURCES and not Path(source).is_dir():
        load_source(str(source), data_dir)  # a path that is not there (or a misspelt name) is named first
    default = f" (the one `train {source}` uses without --recipe)" if recipe is None else ""
    recipe = load_recipe(recipe or default_recipe(source))
    augment = recipe.augment
    if not augment.active:
        raise SmallvisionError(f"recipe {recipe.name!r}{default} has no augmentation to preview: its training sees "
                               f"each image as it is; name one with --recipe (a built-in such as "
                               f"seed-catsdogs-augment, or a .toml file that sets some)")
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
    writable_directory(out.parent)
    plot_image_grid(torch.cat([original.float(), augmented]), ["original"] + [f"augmented {i + 1}" for i in range(count)],
                    out, title=f"{name} ({label})\n{recipe.name}: {augment.describe()}")
    return out
