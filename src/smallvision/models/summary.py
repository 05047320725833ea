"""A Keras-style `model.summary()`: layer, output shape and parameters, from a dry run."""

import copy

import torch
from torch import nn

from smallvision.models.layers import Sequential


def layer_table(model: Sequential) -> list[tuple[str, tuple, int]]:
    """(name and type, Keras output shape, parameter count) for each layer."""
    rows = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for name, x in model.layer_outputs(torch.zeros(1, *model.input_shape)).items():
            layer = model.layers[name]
            shape = (None, *x.shape[2:], x.shape[1]) if x.dim() == 4 else (None, *x.shape[1:])
            rows.append((f"{name} ({type(layer).__name__})", shape, count_parameters(layer)))
    model.train(was_training)
    return rows


def count_parameters(module: nn.Module, trainable: bool | None = None) -> int:
    """Weights plus batch-norm statistics, as Keras counts them."""
    total = sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)
    if trainable is not True:
        total += sum(b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var")))
    return total


def backbone_table(model) -> list[tuple[str, tuple, int]]:
    """A pretrained backbone as one row (its pooled features), then its head's layers."""
    backbone = (f"{model.model_name} (backbone)", (None, model.backbone.num_features), count_parameters(model.backbone))
    return [backbone] + layer_table(model.head)


def stage_lines(model, fine_tune_blocks: int = 0) -> list[str]:
    """Trainable and frozen parameters in each stage of a backbone model's training."""
    total = count_parameters(model)
    head = count_parameters(model.head, trainable=True)
    lines = [f"Stage one (feature extraction): {head:,} trainable (the head), {total - head:,} frozen"]
    if fine_tune_blocks:
        tuned = copy.deepcopy(model)
        tuned.freeze_backbone()
        tuned.unfreeze_last_blocks(fine_tune_blocks)
        trainable = count_parameters(tuned, trainable=True)
        lines.append(f"Stage two (fine-tuning the last {fine_tune_blocks} blocks): {trainable:,} trainable, "
                     f"{total - trainable:,} frozen")
    return lines


def summary(model: Sequential, width: int = 72, fine_tune_blocks: int = 0) -> str:
    rows = backbone_table(model) if hasattr(model, "backbone") else layer_table(model)
    name_w, shape_w = max(34, *(len(name) + 1 for name, _, _ in rows)), 24
    width = max(width, name_w + shape_w + 12)  # long layer names widen the table rather than break it
    rule = "─" * width
    lines = [f'Model: "{model.model_name}"', rule,
             f"{'Layer (type)':<{name_w}}{'Output Shape':<{shape_w}}{'Param #':>{width - name_w - shape_w}}", "═" * width]
    for name, shape, params in rows:
        lines.append(f"{name:<{name_w}}{str(shape):<{shape_w}}{params:>{width - name_w - shape_w},}")
    trainable = count_parameters(model, trainable=True)
    total = count_parameters(model)
    lines += [rule, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}"]
    if hasattr(model, "backbone"):
        lines += stage_lines(model, fine_tune_blocks)
    return "\n".join(lines)
