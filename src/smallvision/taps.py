"""Inside a network: the layers that give feature maps, by name, and their outputs for an input.

Layer names are the ones `--layer` takes: Keras-style names for smallvision's own networks
(conv2d, max_pooling2d, conv2d_1, ...), module paths inside a pretrained backbone (blocks.5,
conv_head, bn2, ... as timm names them).
"""

import torch
from torch import nn

from smallvision.errors import SmallvisionError
from smallvision.models.layers import Padded, Pooling, Sequential, ZeroPadding2D


class _Enough(Exception):
    """Raised from a hook once every wanted layer has run: the rest of the network is not needed."""


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer a user may name, in the order they run."""
    if isinstance(model, Sequential):
        return dict(model.layers.items())
    layers = {}
    for name, child in model.backbone.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):  # a backbone's stages: name each one
            layers.update({f"{name}.{index}": part for index, part in enumerate(child)})
        else:
            layers[name] = child
    return layers


def run_with_taps(model: nn.Module, x: torch.Tensor, names: set[str] | list[str],
                  stop_early: bool = False) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """(logits, {name: output}) for the named layers. The outputs stay in the autograd graph, so
    gradients can be taken with respect to them. With `stop_early` the network stops after the last
    named layer and logits is None."""
    wanted = set(names)
    taps: dict[str, torch.Tensor] = {}

    def keep(name: str, output: torch.Tensor) -> torch.Tensor:
        taps[name] = output
        if stop_early and wanted <= taps.keys():
            raise _Enough
        return output.clone()  # a later layer may work in place; the kept output must stay as it was

    if isinstance(model, Sequential):
        # Layer by layer as declared: Sequential.forward fuses a convolution with its pooling.
        try:
            for name, layer in model.layers.items():
                x = layer(x)
                if name in wanted:
                    x = keep(name, x)
        except _Enough:
            return None, taps
        return x, taps
    layers = candidate_layers(model)
    hooks = [layers[name].register_forward_hook(lambda _m, _i, output, name=name: keep(name, output))
             for name in wanted if name in layers]
    try:
        return model(x), taps
    except _Enough:
        return None, taps
    finally:
        for hook in hooks:
            hook.remove()


def map_shapes(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """{layer name: (channels, height, width)} for every layer whose output is a feature map."""
    layers = candidate_layers(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        _, taps = run_with_taps(model, torch.zeros(1, *model.input_shape, device=device), layers)
    model.train(was_training)
    return {name: tuple(taps[name].shape[1:]) for name in layers
            if name in taps and isinstance(taps[name], torch.Tensor) and taps[name].dim() == 4}


def describe_shape(shape: tuple[int, int, int]) -> str:
    channels, height, width = shape
    return f"{height}x{width}x{channels}"


def check_layers(model: nn.Module, names: list[str]) -> dict[str, tuple[int, int, int]]:
    """The shapes of the named layers; an error naming the layers there are when one is not a map layer."""
    shapes = map_shapes(model)
    for name in names:
        if name not in shapes:
            listing = ", ".join(f"{layer} ({describe_shape(shape)})" for layer, shape in shapes.items())
            raise SmallvisionError(f"{model.model_name} has no layer {name!r} with a feature map; "
                                   f"its layers with maps are: {listing}")
    return {name: shapes[name] for name in names}


def default_cam_layer(model: nn.Module) -> str:
    """The last layer that still gives a map, pooling aside: the seed's last convolution, a residual
    stage's output, a backbone's final convolution block (EfficientNet's bn2)."""
    layers = candidate_layers(model)
    shapes = map_shapes(model)
    for name in reversed(shapes):
        if not isinstance(layers[name], (nn.MaxPool2d, nn.AvgPool2d, Pooling)) and min(shapes[name][1:]) > 1:
            return name
    raise SmallvisionError(f"{model.model_name} has no convolutional layer to explain")


def map_geometry(model: nn.Module, layer: str) -> tuple[float, float] | None:
    """Where a layer's map lies on the input: (the input pixel under the centre of cell 0, pixels from one
    cell to the next). 'valid' convolutions shift the map inwards, so stretching it over the image would
    misplace it by up to a receptive field's radius. Known for smallvision's own networks; None for a
    backbone, whose 'same' padding keeps its maps close enough to centred."""
    if not isinstance(model, Sequential):
        return None
    start, jump = 0.0, 1.0
    height, width = model.input_shape[1:]
    for name, module in model.layers.items():
        if isinstance(module, Padded):
            (kernel, _), (stride, _), (dilation, _) = module.window()
            top = module.pads(height, width)[0]
            start += (((kernel - 1) * dilation) / 2 - top) * jump
            jump *= stride
        elif isinstance(module, ZeroPadding2D):
            start -= module.config["padding"][0][0] * jump
        if len(module.built_shape or ()) == 3:
            height, width = module.built_shape[1:]
        if name == layer:
            return start, jump
    return None
