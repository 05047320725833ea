"""Inference: a run's network on uint8 images -> probabilities, in batches sized by pixels, in the
number format the machine computes natively. Training, `Run`, the ONNX export and serving all score
through here, so none of them depends on the training loop."""

import contextlib
import time
from dataclasses import dataclass

import torch

from smallvision import distributed
from smallvision.calibration import Calibration, calibrate, set_temperature
from smallvision.data.cache import release_pages
from smallvision.data.imageset import ImageSet
from smallvision.errors import SmallvisionError
from smallvision.metrics import BINS, bin_sums, confusion_matrix, ece_of, log_loss
from smallvision.models.layers import Sequential
from smallvision.recipe import Preprocess  # the recipe's group: uint8 pixels -> the model's input
from smallvision.unknown import (HELD_IMAGES, MIN_HELD, REFERENCE_IMAGES, UnknownScorer, check_rate, fit_unknown,
                                 reference_order)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SmallvisionError("--device cuda asked for, but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """bf16 autocast for "bf16"; nothing for "fp32" (precision.py decides which a run uses)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


CPU_BATCH_PIXELS = 64 * 224 * 224


def inference_batch(shape: tuple[int, ...], device: torch.device, on_gpu: int = 2000) -> int:
    """Images per batch when only predicting, for images of `shape` ([..., H, W]). A GPU's many cores
    want big batches (`on_gpu`). On the CPU, any batch of a few million pixels is as fast as a bigger one
    (500 of MNIST's 28x28 at most, 64 photos at 224x224), and its activations stay small: 500 photos at
    224x224 made gigabytes of them each batch, 2.4x slower here with glibc's default heap, and the peak
    memory of a whole fine-tuning run."""
    if device.type == "cuda":
        return on_gpu
    return max(1, min(500, CPU_BATCH_PIXELS // (shape[-2] * shape[-1])))


@torch.no_grad()
def predict_probabilities(model: Sequential, images: torch.Tensor, preprocess: Preprocess, precision: str,
                          device: torch.device, test_time_flip: bool = False, batch_size: int | None = None) -> torch.Tensor:
    """Class probabilities [N, classes] (float32, on the CPU) for uint8 images; with `test_time_flip`,
    the mean of each image's and its mirror image's. Batches as `inference_batch` says; read back once,
    at the end."""
    model.eval()
    chunks = []
    batch_size = batch_size or inference_batch(images.shape, device)
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size].to(device))
        with autocast(device, precision):
            probabilities = model.predict_proba(model(x))
            if test_time_flip:
                probabilities = (probabilities + model.predict_proba(model(x.flip(-1)))) / 2
        chunks.append(probabilities.float())
    return torch.cat(chunks).cpu() if chunks else torch.empty(0, 0)


def split_probabilities(model: Sequential, data: ImageSet, preprocess: Preprocess, precision: str,
                        device: torch.device, test_time_flip: bool = False, chunk: int = 4096) -> torch.Tensor:
    """predict_probabilities for a split, a chunk at a time: a split mapped from the decode cache is read
    piece by piece, never copied whole."""
    if not data.mapped:
        return predict_probabilities(model, data.images, preprocess, precision, device, test_time_flip)
    pieces = [predict_probabilities(model, images, preprocess, precision, device, test_time_flip)
              for _, images in data.chunks(chunk)]
    release_pages()
    return torch.cat(pieces) if pieces else torch.empty(0, 0)


@dataclass(frozen=True)
class Scores:
    """A labelled split scored: the mean log loss and the confusion matrix (rows: true classes)."""

    loss: float
    confusion: torch.Tensor  # int64 [classes, classes]
    bins: torch.Tensor  # calibration.bin_sums: the images, summed top probability and right answers per bin
    unknown: int | None = None  # images the run's unknown scorer calls unknown (None: scored without one)
    outputs: "Outputs | None" = None  # with keep_outputs: the logits and features they came from (one process)

    @property
    def ece(self) -> float:
        """The expected calibration error (15 equal-width bins of top probability)."""
        return ece_of(self.bins)

    @property
    def accuracy(self) -> float:
        return float(self.confusion.diag().sum() / self.confusion.sum().clamp_min(1))

    @property
    def recall(self) -> torch.Tensor:
        """Per class: the share of its images answered right (0 for a class without any)."""
        support = self.confusion.sum(1)
        return self.confusion.diag().double() / support.clamp_min(1)

    @property
    def balanced_accuracy(self) -> float:
        """The mean recall over the classes that have images: accuracy as if every class were as common."""
        present = self.confusion.sum(1) > 0
        return float(self.recall[present].mean()) if present.any() else 0.0

    def as_metrics(self, prefix: str, class_names: list[str]) -> dict:
        """metrics.json's figures for the split: PREFIX_accuracy, _loss, _balanced_accuracy, _ece, _recall (per
        class), and _unknown_rate where an unknown scorer counted."""
        return {f"{prefix}_accuracy": self.accuracy, f"{prefix}_loss": self.loss,
                f"{prefix}_balanced_accuracy": self.balanced_accuracy, f"{prefix}_ece": round(self.ece, 6),
                f"{prefix}_recall": {name: round(float(value), 6) for name, value in zip(class_names, self.recall)},
                **({} if self.unknown is None else {f"{prefix}_unknown_rate": round(self.unknown_rate, 6)})}

    @property
    def unknown_rate(self) -> float:
        """The share of the split's images called unknown."""
        return (self.unknown or 0) / max(int(self.confusion.sum()), 1)


def split_scores(model: Sequential, data: ImageSet, preprocess: Preprocess, precision: str,
                 device: torch.device, test_time_flip: bool = False, unknown: UnknownScorer | None = None,
                 keep_outputs: bool = False) -> Scores:
    """A labelled split's log loss and confusion matrix (and with an `unknown` scorer, how many of its images it
    calls unknown); several processes score a share each and add up. `keep_outputs` (one process, no scorer):
    the split's `Outputs` come with the scores, for the fit after training (a validation need not run twice)."""
    ranks = distributed.ranks()
    start, stop = ranks.share(len(data)) if ranks.world > 1 else (0, len(data))
    share = data if ranks.world == 1 else data.subset(torch.arange(start, stop))
    called_unknown, kept = 0, None
    if keep_outputs and unknown is None and ranks.world == 1 and len(share):
        kept = split_outputs(model, share, preprocess, precision, device, test_time_flip)
        probabilities = kept.probabilities(model)
    elif unknown is None:
        probabilities = split_probabilities(model, share, preprocess, precision, device, test_time_flip)
    else:
        outputs = split_outputs(model, share, preprocess, precision, device, test_time_flip, unknown)
        probabilities = outputs.probabilities(model) if len(share) else torch.empty(0, 0)
        called_unknown = int(unknown.is_unknown(outputs.scores).sum()) if len(share) else 0
    labels = share.labels.cpu()
    classes = data.num_classes
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    bins = torch.zeros(3, BINS, dtype=torch.float64)
    loss_sum = 0.0
    if len(labels):
        confusion = confusion_matrix(labels, probabilities.argmax(1), classes)
        loss_sum = log_loss(labels, probabilities) * len(labels)
        bins = bin_sums(probabilities, labels)
    counted = unknown is not None
    if ranks.world == 1:
        return Scores(loss_sum / max(len(labels), 1), confusion, bins, called_unknown if counted else None, kept)
    totals = distributed.sum_across(torch.cat([torch.tensor([loss_sum, called_unknown]), confusion.flatten().double(),
                                               bins.flatten()]).to(device)).cpu()
    cells = classes * classes
    return Scores(float(totals[0]) / max(len(data), 1), totals[2:2 + cells].round().long().view(classes, classes),
                  totals[2 + cells:].view(3, BINS), int(totals[1].round()) if counted else None)


@dataclass(frozen=True)
class Outputs:
    """A split through the network, on the CPU: the logits (float32 [views, N, outputs]: one view, or two with
    test-time flipping, the image and its mirror image, whose probabilities the run averages), and either the
    penultimate features of each image (float32 [N, D]: the unknown scorer's input) or, given a scorer, each
    image's unknown score (float32 [N]: a batch's features scored and dropped, so a big split holds no [N, D])."""

    logits: torch.Tensor
    features: torch.Tensor | None = None
    scores: torch.Tensor | None = None

    def probabilities(self, model) -> torch.Tensor:
        """The network's probabilities [N, classes] at its temperature: each view's, then their mean."""
        return torch.stack([model.predict_proba(view) for view in self.logits]).mean(0)


def split_outputs(model, data: ImageSet, preprocess, precision: str, device: torch.device,
                  test_time_flip: bool = False, unknown: UnknownScorer | None = None) -> Outputs:
    """`Outputs` of a split, a chunk at a time (a split mapped from the decode cache is never whole in memory)."""
    outputs = batch_outputs(model, (images for _, images in data.chunks(inference_batch(data.shape, device))),
                            preprocess, precision, device, test_time_flip, unknown)
    if data.mapped:
        release_pages()
    return outputs


@torch.no_grad()
def batch_outputs(model, batches, preprocess, precision: str, device: torch.device, test_time_flip: bool,
                  unknown: UnknownScorer | None = None) -> Outputs:
    """`Outputs` of uint8 image batches, read back to the CPU a batch at a time."""
    model.eval()
    kept: list[torch.Tensor] = []  # each batch's features, or with `unknown` its scores
    views: list[list[torch.Tensor]] = [[] for _ in range(2 if test_time_flip else 1)]
    for images in batches:
        x = preprocess(images.to(device))
        with autocast(device, precision):
            penultimate, logits = model.features_and_logits(x)
            views[0].append(logits.float().cpu())
            if test_time_flip:
                views[1].append(model(x.flip(-1)).float().cpu())
        # scored in fp32, outside autocast: a cosine near 1 in bf16 keeps two digits of the distance
        kept.append(penultimate.float().cpu() if unknown is None else unknown.scores(penultimate.float()).cpu())
    if not kept:
        empty = torch.empty(0) if unknown is not None else torch.empty(0, 0)
        return Outputs(torch.empty(len(views), 0, 0), **{"scores" if unknown is not None else "features": empty})
    logits = torch.stack([torch.cat(view) for view in views])
    return Outputs(logits, scores=torch.cat(kept)) if unknown is not None else Outputs(logits, features=torch.cat(kept))


@dataclass(frozen=True)
class Fitted:
    """What a run fits after its training: the temperature and the unknown scorer (both None where too few
    images could be held out to fit them on: `why_no_unknown` says so)."""

    calibration: Calibration | None
    unknown: UnknownScorer | None
    why_no_unknown: str | None = None
    seconds: float = 0.0  # what fitting them took (metrics.json: after_training_seconds)


def fit_after_training(model, train: ImageSet, validation: ImageSet | None, preprocess, precision: str,
                       device: torch.device, test_time_flip: bool, rate: float, seed: int = 0,
                       reference_images: int = REFERENCE_IMAGES, validated: "Outputs | None" = None,
                       reference: torch.Tensor | None = None) -> Fitted:
    """The temperature (calibration.py: kept on the network where it lowers the NLL of the images it is fitted
    on) and the unknown scorer (unknown.py: the reference from training images, the threshold on the same
    held-out images), both fitted on the validation split, or where there is none (IDX digits) on training
    images left out of the reference; from one pass over those and one over at most `reference_images`
    (unknown.reference_size: what the network can afford at every answer) training images.

    Either pass is skipped where training already made it with the network as it is now: `validated`, the
    loop's last validation's `Outputs` (Loop.validated); `reference`, training images' penultimate features
    (float32 [M, D]: callbacks.ReferenceTap, for a network whose features stay still as it trains)."""
    check_rate(rate)
    started = time.perf_counter()
    order = reference_order(len(train), seed)
    if validation is not None and len(validation) >= MIN_HELD:
        held, where = validation, "validation"
    else:  # training images the reference leaves out: all past the reference, or a fifth
        count = min(HELD_IMAGES, max(len(train) - reference_images, len(train) // 5))
        if count < MIN_HELD:
            have = len(validation) if validation is not None else 0
            return Fitted(None, None, f"no unknown scorer or temperature: they need {MIN_HELD} held-out images, a "
                                      f"validation split of {MIN_HELD} (this one has {have}) or {MIN_HELD * 5} "
                                      f"training images (there are {len(train)})")
        # Seen in training, but near what unseen ones give a network that does not overfit: measured on MNIST,
        # fast-mnist's (label smoothing; the seed's network then) test ECE 0.099 -> 0.002 with the T fitted on them,
        # seed-mnist's 0.004 -> 0.003
        held, where = train.subset(order[len(train) - count:]), "training images not in the reference"
        order = order[:len(train) - count]
    if validated is None or held is not validation or validated.logits.shape[1] != len(held):
        validated = split_outputs(model, held, preprocess, precision, device, test_time_flip)
    calibration = calibrate(model, validated.logits, held.labels, where)
    set_temperature(model, calibration.temperature if calibration.kept else None)
    if reference is None:
        reference = split_outputs(model, train.subset(order[:reference_images]), preprocess, precision,
                                  device).features
    return Fitted(calibration, fit_unknown(reference, validated.features, rate, where),
                  seconds=time.perf_counter() - started)


def scores_with_unknown(model, images: torch.Tensor, preprocess: Preprocess, precision: str, device: torch.device,
                        test_time_flip: bool, scorer: UnknownScorer) -> tuple[torch.Tensor, torch.Tensor]:
    """(class probabilities [N, classes], unknown scores [N]) for uint8 images, both float32 on the CPU, from one
    pass (the mirror image's too with `test_time_flip`; its features are not scored)."""
    size = inference_batch(images.shape, device)
    outputs = batch_outputs(model, (images[start:start + size] for start in range(0, len(images), size)), preprocess,
                            precision, device, test_time_flip, scorer)
    return outputs.probabilities(model), outputs.scores
