"""Inference: a run's network on uint8 images -> probabilities, in batches sized by pixels, in the
number format the machine computes natively. Training, `Run`, the ONNX export and serving all score
through here, so none of them depends on the training loop."""

import contextlib
from dataclasses import dataclass

import torch

from smallvision import distributed
from smallvision.calibration import calibrate, set_temperature
from smallvision.data.cache import release_pages
from smallvision.data.imageset import ImageSet
from smallvision.errors import SmallvisionError
from smallvision.metrics import BINS, bin_sums, confusion_matrix, ece_of, log_loss
from smallvision.models.layers import Sequential
from smallvision.recipe import Preprocess  # the recipe's group: uint8 pixels -> the model's input


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


def evaluate_imageset(model: Sequential, data: ImageSet, preprocess: Preprocess, precision: str,
                      device: torch.device, test_time_flip: bool = False) -> tuple[float, float]:
    """(log loss, accuracy) on a labelled split (each validation)."""
    scores = split_scores(model, data, preprocess, precision, device, test_time_flip)
    return scores.loss, scores.accuracy


@dataclass(frozen=True)
class Scores:
    """A labelled split scored: the mean log loss and the confusion matrix (rows: true classes)."""

    loss: float
    confusion: torch.Tensor  # int64 [classes, classes]
    bins: torch.Tensor  # calibration.bin_sums: the images, summed top probability and right answers per bin

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
        """metrics.json's figures for the split: PREFIX_accuracy, _loss, _balanced_accuracy, _recall (per class)."""
        return {f"{prefix}_accuracy": self.accuracy, f"{prefix}_loss": self.loss,
                f"{prefix}_balanced_accuracy": self.balanced_accuracy, f"{prefix}_ece": round(self.ece, 6),
                f"{prefix}_recall": {name: round(float(value), 6) for name, value in zip(class_names, self.recall)}}


def split_scores(model: Sequential, data: ImageSet, preprocess: Preprocess, precision: str,
                 device: torch.device, test_time_flip: bool = False) -> Scores:
    """A labelled split's log loss and confusion matrix; several processes score a share each and add up."""
    ranks = distributed.ranks()
    start, stop = ranks.share(len(data)) if ranks.world > 1 else (0, len(data))
    share = data if ranks.world == 1 else data.subset(torch.arange(start, stop))
    probabilities = split_probabilities(model, share, preprocess, precision, device, test_time_flip)
    labels = share.labels.cpu()
    classes = data.num_classes
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    bins = torch.zeros(3, BINS, dtype=torch.float64)
    loss_sum = 0.0
    if len(labels):
        confusion = confusion_matrix(labels, probabilities.argmax(1), classes)
        loss_sum = log_loss(labels, probabilities) * len(labels)
        bins = bin_sums(probabilities, labels)
    if ranks.world == 1:
        return Scores(loss_sum / max(len(labels), 1), confusion, bins)
    totals = distributed.sum_across(torch.cat([torch.tensor([loss_sum]), confusion.flatten().double(),
                                               bins.flatten()]).to(device)).cpu()
    cells = classes * classes
    return Scores(float(totals[0]) / max(len(data), 1), totals[1:1 + cells].round().long().view(classes, classes),
                  totals[1 + cells:].view(3, BINS))


@torch.no_grad()
def split_logits(model, data: ImageSet, preprocess, precision: str, device: torch.device,
                 test_time_flip: bool = False) -> torch.Tensor:
    """The network's logits for a split, float32 [views, N, outputs] on the CPU: one view, or two with
    `test_time_flip` (the image and its mirror image, whose probabilities the run averages)."""
    model.eval()
    views: list[list[torch.Tensor]] = [[] for _ in range(2 if test_time_flip else 1)]
    for _, images in data.chunks(inference_batch(data.shape, device)):
        x = preprocess(images.to(device))
        with autocast(device, precision):
            views[0].append(model(x).float().cpu())
            if test_time_flip:
                views[1].append(model(x.flip(-1)).float().cpu())
    return torch.stack([torch.cat(view) for view in views])


def calibrated(model: Sequential, validation: ImageSet, preprocess: Preprocess, precision: str, device: torch.device,
               test_time_flip: bool = False):
    """A temperature fitted on the validation split (calibration.py), kept on the network (`set_temperature`)
    where it lowers the split's NLL; the Calibration."""
    logits = split_logits(model, validation, preprocess, precision, device, test_time_flip)
    calibration = calibrate(model, logits, validation.labels)
    set_temperature(model, calibration.temperature if calibration.kept else None)
    return calibration
