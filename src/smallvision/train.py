"""The training loop: the whole split on the device as uint8, batches drawn by index, one pass to float."""

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from smallvision.data.imageset import ImageSet
from smallvision.errors import SmallvisionError
from smallvision.models.layers import Sequential
from smallvision.optim import build_optimizer, flatten_parameters, learning_rate_factor
from smallvision.progress import progress_bar
from smallvision.recipe import Recipe


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SmallvisionError("--device cuda asked for, but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Preprocess:
    """uint8 pixels -> float model input: x * rescale, then (x - mean) / std when given."""

    rescale: float
    mean: float | None = None
    std: float | None = None
    channels_last: bool = True

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "Preprocess":
        return cls(recipe.rescale, recipe.mean, recipe.std, recipe.channels_last)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().mul_(self.rescale)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class History:
    """One dict per epoch: epoch, loss, accuracy, val_loss, val_accuracy, seconds, learning_rate."""

    epochs: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images_seen / self.train_seconds if self.train_seconds else 0.0


def fit(model: Sequential, train: ImageSet, recipe: Recipe, validation: ImageSet | None = None,
        device: torch.device | None = None, progress: bool = True) -> History:
    """Train `model` in place on `train` as `recipe` says; validate after each epoch."""
    device = device or resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)
    generator = torch.Generator(device=device).manual_seed(recipe.seed)
    model.to(device)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    flat_weights = flatten_parameters(model)
    optimizer = build_optimizer([flat_weights], recipe)
    preprocess = Preprocess.from_recipe(recipe)
    images, labels = train.images.to(device), train.labels.to(device)
    steps_per_epoch = recipe.steps_per_epoch or math.ceil(len(train) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    history = History()
    order, cursor, step = torch.empty(0, dtype=torch.long, device=device), 0, 0
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = progress_bar(progress, total=steps_per_epoch, desc=f"epoch {epoch}/{recipe.epochs}", unit="batch", leave=False)
        for batch_index in range(steps_per_epoch):
            if cursor >= len(order):
                order, cursor = torch.randperm(len(train), device=device, generator=generator), 0
            batch = order[cursor:cursor + recipe.batch_size]
            cursor += recipe.batch_size
            for group in optimizer.param_groups:
                group["lr"] = recipe.learning_rate * learning_rate_factor(recipe, step, total_steps)
            x, y = preprocess(images[batch]), labels[batch]
            with autocast(device, recipe.precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
            flat_weights.grad.zero_()
            loss.backward()
            optimizer.step()
            step += 1
            seen += len(batch)
            loss_sum += loss.detach() * len(batch)
            correct += (logits.argmax(1) == y).sum()
            if batch_index % 50 == 49 or batch_index == steps_per_epoch - 1:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", accuracy=f"{correct.item() / seen:.4f}",
                                img_s=f"{seen / elapsed:.0f}", refresh=False)
                bar.update(batch_index + 1 - bar.n)
        bar.close()
        seconds = time.perf_counter() - start
        history.train_seconds += seconds
        history.images_seen += seen
        row = dict(epoch=epoch, loss=loss_sum.item() / seen, accuracy=correct.item() / seen,
                   seconds=seconds, learning_rate=optimizer.param_groups[0]["lr"])
        if validation is not None:
            val_loss, val_accuracy = evaluate_imageset(model, validation, preprocess, recipe.precision, device)
            row.update(val_loss=val_loss, val_accuracy=val_accuracy)
        history.epochs.append(row)
        if progress:
            print(format_epoch(row, recipe.epochs, seen / seconds), flush=True)
    return history


def format_epoch(row: dict, epochs: int, images_per_second: float) -> str:
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}"
            f"  {row['seconds']:.1f}s  {images_per_second:,.0f} img/s")
    if "val_accuracy" in row:
        text += f"  val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}"
    return text


@torch.no_grad()
def predict_probabilities(model: Sequential, images: torch.Tensor, preprocess: Preprocess, precision: str,
                          device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    """Class probabilities [N, classes] (float32, on the CPU) for uint8 images."""
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size].to(device))
        with autocast(device, precision):
            chunks.append(model.predict_proba(model(x)).cpu())
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def evaluate_imageset(model: Sequential, data: ImageSet, preprocess: Preprocess, precision: str,
                      device: torch.device) -> tuple[float, float]:
    """(log loss, accuracy) on a labelled split."""
    probabilities = predict_probabilities(model, data.images, preprocess, precision, device)
    labels = data.labels.cpu()
    picked = probabilities[torch.arange(len(labels)), labels].clamp_min(1e-7)
    return float(-picked.log().mean()), float((probabilities.argmax(1) == labels).float().mean())
