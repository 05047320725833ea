"""Inference: a run's network on uint8 images -> probabilities, in batches sized by pixels, in the
number format the machine computes natively. Training, `Run`, the ONNX export and serving all score
through here, so none of them depends on the training loop."""

import contextlib

import torch

from smallvision import distributed
from smallvision.data.cache import release_pages
from smallvision.data.imageset import ImageSet
from smallvision.errors import SmallvisionError
from smallvision.metrics import log_loss
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
    """(log loss, accuracy) on a labelled split; several processes score a share each and add up."""
    ranks = distributed.ranks()
    if ranks.world == 1:
        probabilities = split_probabilities(model, data, preprocess, precision, device, test_time_flip)
        labels = data.labels.cpu()
        return log_loss(labels, probabilities), float((probabilities.argmax(1) == labels).float().mean())
    start, stop = ranks.share(len(data))
    probabilities = split_probabilities(model, data.subset(torch.arange(start, stop)), preprocess, precision, device,
                                        test_time_flip)
    labels = data.labels[start:stop].cpu()
    totals = torch.zeros(3, dtype=torch.float64)  # this share's summed log loss, correct answers, images
    if len(labels):
        totals += torch.tensor([log_loss(labels, probabilities) * len(labels),
                                float((probabilities.argmax(1) == labels).sum()), float(len(labels))],
                               dtype=torch.float64)
    totals = distributed.sum_across(totals.to(device)).cpu()
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])
