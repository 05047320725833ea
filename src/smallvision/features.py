"""Feature extraction: a frozen backbone's features of every image computed once, a head trained on them.

The seed's fast variant of using a pretrained network: each image goes through the backbone once
(not once per epoch), so training the Dropout + Dense head costs seconds.
"""

import dataclasses

import torch

from smallvision.data.imageset import DataSource, ImageSet
from smallvision.models.backbones import BackboneClassifier
from smallvision.progress import progress_bar
from smallvision.recipe import Recipe
from smallvision.train import History, Preprocess, autocast, evaluate_imageset, fit


@torch.no_grad()
def extract_features(model: BackboneClassifier, images: torch.Tensor, preprocess: Preprocess, precision: str,
                     device: torch.device, progress: bool = True, description: str = "features",
                     batch_size: int = 100) -> torch.Tensor:
    """float32 [N, D, 1, 1] backbone features of uint8 images [N, C, H, W]."""
    model.eval()
    chunks = []
    bar = progress_bar(progress, total=len(images), desc=description, unit="img", leave=False)
    for start in range(0, len(images), batch_size):
        with autocast(device, precision):
            chunks.append(model.features(preprocess(images[start:start + batch_size].to(device))).float())
        bar.update(len(chunks[-1]))
    bar.close()
    return torch.cat(chunks)


def fit_on_features(model: BackboneClassifier, dataset: DataSource, recipe: Recipe, device: torch.device,
                    progress: bool = True) -> tuple[History, dict]:
    """Train `model.head` on the frozen backbone's features of each split; (history, test metrics)."""
    model.to(device)
    model.freeze_backbone()
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    preprocess = Preprocess.from_recipe(recipe)
    features = {}
    for split, images in dataset.splits().items():
        values = extract_features(model, images.images, preprocess, recipe.precision, device, progress,
                                  f"{recipe.backbone} features of {split}")
        features[split] = ImageSet(values, images.labels, images.class_names)
    # The head sees features as they are: no rescaling, normalisation or augmentation.
    head_recipe = dataclasses.replace(recipe, rescale=1.0, mean=None, std=None, test_time_flip=False,
                                      channels_last=False)
    history = fit(model.head, features["train"], head_recipe, features.get("validation"), device, progress)
    test = {}
    if "test" in features:
        loss, accuracy = evaluate_imageset(model.head, features["test"], Preprocess.from_recipe(head_recipe),
                                           recipe.precision, device)
        test = {"test_accuracy": accuracy, "test_loss": loss}
    return history, test
