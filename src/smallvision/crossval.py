"""Out-of-sample probabilities: every image scored by a model that never saw it.

The audit asks, of every image, how likely its folder's class is; a model asked about an image it trained on
has learned its label, wrong or not. So the training split is cut into k stratified folds, each scored by a
model trained on the other k - 1, and the other splits (validation, test) by the mean of those k models,
none of which saw them. Two kinds of model: a linear head on frozen pretrained features (seconds, once the
features exist), or a recipe's own network trained k times (digits, or anything a pretrained network fits
badly).
"""

import dataclasses

import torch

from smallvision.data.imageset import DataSource, ImageSet
from smallvision.errors import SmallvisionError
from smallvision.progress import progress_bar

MIN_FOLDS = 2


def fold_count(labels: torch.Tensor, class_names: list[str], wanted: int) -> int:
    """The folds to use: `wanted`, or fewer when a class has fewer training images than that (each fold must
    hold out at least one image of every class and train on at least one); one class, or a class of one
    image, cannot be cross-validated at all."""
    counts = torch.bincount(labels, minlength=len(class_names)).tolist()
    present = [(count, name) for count, name in zip(counts, class_names) if count]
    if len(present) < 2:
        raise SmallvisionError(f"only one class ({present[0][1] if present else 'none'}) has training images: "
                               f"nothing to tell apart, so no label can be checked; add a second class folder")
    fewest, name = min(present)
    if fewest < MIN_FOLDS:
        raise SmallvisionError(f"class {name!r} has {fewest} training image: cross-validation needs at least "
                               f"{MIN_FOLDS} per class; add images to it, or leave it out")
    return min(wanted, fewest)


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """Each image's fold in [0, folds): every class dealt round the folds in a seeded random order."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fold[members] = torch.arange(len(members)) % folds
    return fold


# The heads' L2 penalty on standardised features. Out-of-sample accuracy against the true labels of the shared
# cats-vs-dogs train split with 10% of its labels moved (benchmarks/audit_figures.py): 0.864 at 1e-3, 0.938 at
# 0.1, 0.959 at 0.3, 0.965-0.967 from 1 to 30 (1,280 features for 1,600 images: a weak penalty learns the noise)
WEIGHT_DECAY = 0.3


def fit_linear_head(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float = WEIGHT_DECAY,
                    iterations: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised features, L-BFGS over the whole set (no batches, no
    learning rate to choose): a few hundred milliseconds for thousands of images."""
    head = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + weight_decay / 2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def linear_probabilities(features: dict[str, torch.Tensor], labels: torch.Tensor, classes: int, folds: int,
                         seed: int = 0, progress: bool = True, leave_out: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """`features` [N, D] per split ("train" among them): the train split's probabilities from k folds, the
    others' as the mean of the k heads'. `leave_out` (bool [N train]): images no head trains on (still scored),
    e.g. those a first pass doubted."""
    fold = stratified_folds(labels, folds, seed)
    train = features["train"]
    out = {"train": torch.zeros(len(train), classes)}
    others = {name: value for name, value in features.items() if name != "train"}
    for name, value in others.items():
        out[name] = torch.zeros(len(value), classes)
    bar = progress_bar(progress, total=folds, desc="cross-validating", unit="fold", leave=False)
    for k in range(folds):
        held = fold == k
        fits = ~held if leave_out is None else ~held & ~leave_out
        fitted, scored, *rest = standardise(train[fits], train[held], *others.values())
        head = fit_linear_head(fitted, labels[fits], classes)
        with torch.no_grad():
            out["train"][held] = head(scored).softmax(1)
            for name, value in zip(others, rest):
                out[name] += head(value).softmax(1) / folds
        bar.update(1)
    bar.close()
    return out


def network_probabilities(source: DataSource, recipe, folds: int, device: torch.device, seed: int = 0,
                          progress: bool = True) -> dict[str, torch.Tensor]:
    """The recipe's network trained k times, each on k - 1 folds of the train split (as `train` would, without
    validation), scoring its held-out fold; the other splits get the mean of the k networks' probabilities."""
    from smallvision.inference import split_probabilities
    from smallvision.loop import Loop
    from smallvision.models import recipe_model
    from smallvision.precision import inference_precision, training_precision

    train: ImageSet = source.train
    fold = stratified_folds(train.labels, folds, seed)
    classes = train.num_classes
    out = {"train": torch.zeros(len(train), classes)}
    for name, split in source.splits().items():
        if name != "train":
            out[name] = torch.zeros(len(split), classes)
    precision = training_precision(recipe.run.precision, device).precision
    # each fold trains without validation: keeping the best epoch, or stopping early, has nothing to go by
    chosen = recipe.replace(precision=precision, run=dataclasses.replace(recipe.run, keep_best=None,
                                                                          early_stopping_patience=0))
    for k in range(folds):
        held = (fold == k).nonzero().flatten()
        kept = (fold != k).nonzero().flatten()
        torch.manual_seed(recipe.run.seed + k)
        model = recipe_model(chosen, tuple(train.shape[1:]), classes)
        if progress:
            print(f"fold {k + 1} of {folds}: training {chosen.name} on {len(kept):,} images, scoring {len(held):,}",
                  flush=True)
        Loop(model, train.subset(kept).in_memory(), chosen, device=device, progress=progress).fit()
        scoring = inference_precision(precision, device)
        out["train"][held] = split_probabilities(model, train.subset(held), chosen.preprocess, scoring, device,
                                                 chosen.run.test_time_flip)
        for name, split in source.splits().items():
            if name != "train":
                out[name] += split_probabilities(model, split, chosen.preprocess, scoring, device,
                                                 chosen.run.test_time_flip) / folds
    return out
