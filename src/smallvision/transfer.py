"""Using a pretrained network, as the seed's chapter does: feature extraction, then fine-tuning.

Stage one trains the Dropout + Dense head on the frozen backbone. Without augmentation each image
goes through the backbone once (its features are computed once, so the head trains in seconds);
with augmentation the frozen backbone runs on every augmented batch (slower, better). Stage two,
when the recipe asks for it, lets the backbone's last blocks train too, at a lower learning rate.
"""

import hashlib
import time

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from smallvision import distributed
from smallvision.calibration import set_temperature
from smallvision.data.cache import user_cache_dir
from smallvision.data.imageset import DataSource, Features, ImageSet
from smallvision.data.sources import split_fingerprints
from smallvision.files import write_atomically
from smallvision.models.backbones import BackboneClassifier
from smallvision.precision import inference_precision
from smallvision.progress import progress_bar
from smallvision.inference import Fitted, autocast, fit_after_training, inference_batch, split_scores
from smallvision.recipe import Preprocess, Recipe
from smallvision.callbacks import ReferenceTap
from smallvision.checkpoint import Resume
from smallvision.loop import History, Loop, Stage
from smallvision.unknown import reference_size

FEATURES_FORMAT = "smallvision-features/1"


def cached_features(model: BackboneClassifier, images: ImageSet, fingerprint: str, preprocess: Preprocess,
                    precision: str, device: torch.device, cache_dir=None, progress: bool = True,
                    description: str = "features") -> torch.Tensor:
    """extract_features, kept on disk beside the decoded images and reused while the split (its
    `fingerprint`, from sources.split_fingerprints: no pixel hashed for a folder), the backbone's weights
    and the preprocessing are the same (the key hashes all three)."""
    key = hashlib.blake2b(digest_size=16)
    key.update(fingerprint.encode())
    for tensor in model.backbone.state_dict().values():
        key.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    key.update(repr((model.model_name, preprocess, precision, FEATURES_FORMAT)).encode())
    path = user_cache_dir(cache_dir) / "features" / f"{key.hexdigest()}.safetensors"
    try:
        return load_file(str(path))["features"]
    except (OSError, KeyError, SafetensorError):
        pass  # not computed yet (or unreadable): compute it
    features = extract_features(model, images, preprocess, precision, device, progress, description)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda p: save_file({"features": features.cpu().contiguous()}, str(p)))
    except OSError:
        pass  # a cache that cannot be written only costs the next run this extraction again
    return features


@torch.no_grad()
def extract_features(model: BackboneClassifier, images: ImageSet, preprocess: Preprocess, precision: str,
                     device: torch.device, progress: bool = True, description: str = "features",
                     batch_size: int | None = None) -> torch.Tensor:
    """float32 [N, D, 1, 1] backbone features of a split's uint8 images, a batch at a time (a split mapped
    from the decode cache is read piece by piece), in batches as `inference_batch` says (500 on a GPU)."""
    model.eval()
    chunks = []
    batch_size = batch_size or inference_batch(images.shape, device, on_gpu=500)
    bar = progress_bar(progress, total=len(images), desc=description, unit="img", leave=False)
    for _, batch in images.chunks(batch_size):
        with autocast(device, precision):
            chunks.append(model.features(preprocess(batch.to(device))).float())
        bar.update(len(chunks[-1]))
    bar.close()
    return torch.cat(chunks)


def fit_backbone_classifier(model: BackboneClassifier, dataset: DataSource, recipe: Recipe, device: torch.device,
                            progress: str | bool = "auto", cache_dir=None, callbacks=(), resume: Resume | None = None,
                            streaming: bool = False) -> tuple[History, dict, Fitted]:
    """Both stages, as the recipe says, each a Loop with the same `callbacks`; (the history of both, test
    metrics when stage one already has them, the temperature and unknown scorer fitted after the last stage).
    `resume` puts a checkpoint back in the stage it names (stage two's carries stage one's history). Stage one
    on features fits on the features; the others take their last validation's outputs from the loop, and a
    frozen backbone's reference from its last epoch's batches (callbacks.ReferenceTap)."""
    resumed = Stage.from_json(resume.header["context"]) if resume is not None else None
    model.freeze_backbone()
    scoring = inference_precision(recipe.run.precision, device)
    fitted = None
    if resumed is None or resumed.number == 1:
        first = [resume, *callbacks] if resume is not None else list(callbacks)
        if recipe.augment.active:
            size = min(reference_size(model, tuple(dataset.train.shape[1:])), len(dataset.train))
            # the frozen backbone's features of the last epoch's augmented photos are the reference, unless
            # stage two moves them (or torch.compile or several processes would not see the tap)
            tap = (ReferenceTap(model.head, size) if not recipe.fine_tune.blocks and recipe.run.compile == "off"
                   and distributed.ranks().world == 1 else None)
            loop = Loop(model, dataset.train, recipe, dataset.validation, device=device,
                        callbacks=[*first, *([tap] if tap else [])], progress=progress, stage=Stage(1),
                        streaming=streaming)
            history, test = loop.fit(), {}
            if not recipe.fine_tune.blocks:
                fitted = fit_after_training(model, dataset.train, dataset.validation, recipe.preprocess, scoring,
                                            device, recipe.run.test_time_flip, recipe.run.unknown_rate,
                                            recipe.run.seed, size, loop.validated and loop.validated[1],
                                            tap.features if tap else None)
        else:
            history, test, fitted = fit_on_features(model, dataset, recipe, device, progress, cache_dir, first)
        history = history.marked(1)
        resume = None  # stage two starts afresh from stage one's weights
    else:
        history, test = resumed.earlier, {}
    if recipe.fine_tune.blocks:
        model.unfreeze_last_blocks(recipe.fine_tune.blocks)
        set_temperature(model, None)  # the head's test score, temperature and scorer would not describe the tuned network
        tuning = recipe.replace(learning_rate=recipe.fine_tune.learning_rate, epochs=recipe.fine_tune.epochs,
                                seed=recipe.run.seed + 1)
        loop = Loop(model, dataset.train, tuning, dataset.validation, device=device,
                    callbacks=[resume, *callbacks] if resume is not None else list(callbacks), progress=progress,
                    stage=Stage(2, earlier=history), streaming=streaming)
        history, test = history.then(loop.fit(), stage=2), {}
        fitted = fit_after_training(model, dataset.train, dataset.validation, recipe.preprocess, scoring, device,
                                    recipe.run.test_time_flip, recipe.run.unknown_rate, recipe.run.seed,
                                    reference_size(model, tuple(dataset.train.shape[1:])),
                                    loop.validated and loop.validated[1])
    return history, test, fitted


def fit_on_features(model: BackboneClassifier, dataset: DataSource, recipe: Recipe, device: torch.device,
                    progress: str | bool = "auto", cache_dir=None, callbacks=()) -> tuple[History, dict, Fitted]:
    """Train `model.head` on the frozen backbone's features of each split, then fit its temperature and the
    unknown scorer on them (inference.fit_after_training; the head's penultimate features are the backbone's
    pooled ones, so the scorer is the whole network's); (history, test metrics, what was fitted)."""
    model.to(device)
    if recipe.preprocess.channels_last:
        model.to(memory_format=torch.channels_last)
    preprocess = recipe.preprocess
    features = {}
    started = time.perf_counter()
    fingerprints = split_fingerprints(dataset)
    with distributed.main_first():  # rank 0 computes and caches the features; the others read them
        for split, images in dataset.splits().items():
            values = cached_features(model, images, fingerprints[split], preprocess, recipe.run.precision, device,
                                     cache_dir, progress, f"{recipe.network.backbone} features of {split}")
            features[split] = Features(values, images.labels, images.class_names)
    # The head sees features as they are: no rescaling, normalisation or augmentation.
    head_recipe = recipe.replace(preprocess=Preprocess(rescale=1.0, mean=None, std=None, channels_last=False),
                                 test_time_flip=False)
    features_seconds = time.perf_counter() - started
    history = Loop(model.head, features["train"], head_recipe, features.get("validation"), device=device,
                   callbacks=callbacks, progress=progress, stage=Stage(1)).fit()
    history.features_seconds = features_seconds
    scoring = inference_precision(recipe.run.precision, device)
    # the reference is sized for the whole network, which is what answers a photo
    size = reference_size(model, tuple(dataset.train.shape[1:]), features["train"].shape[1])
    fitted = fit_after_training(model.head, features["train"], features.get("validation"), head_recipe.preprocess,
                                scoring, device, False, recipe.run.unknown_rate, recipe.run.seed, size)
    test = {}
    if "test" in features:
        test = split_scores(model.head, features["test"], head_recipe.preprocess, scoring, device,
                            unknown=fitted.unknown).as_metrics("test", dataset.class_names)
    return history, test, fitted
