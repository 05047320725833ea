"""Keras' layer vocabulary on PyTorch modules, so summaries and recipes read as the seed does.

The last Dense layer's softmax or sigmoid is recorded, not applied: the loss works on its
inputs (logits), which is the numerically stable form of the same computation, and
`Sequential.predict_proba` applies it.
"""

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "linear": nn.Identity, None: nn.Identity}
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid")


def glorot_init(module: nn.Module) -> None:
    """Keras' defaults: glorot-uniform kernels, zero biases."""
    nn.init.xavier_uniform_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def make_activation(name: str | None) -> nn.Module:
    """Keras' activation by name; ReLU in place, since nothing downstream needs its input."""
    return ACTIVATIONS[name](inplace=True) if name == "relu" else ACTIVATIONS[name]()


class Conv2D(nn.Module):
    def __init__(self, in_channels: int, filters: int, kernel_size: int = 3, activation: str | None = "relu",
                 padding: str = "valid", strides: int = 1, use_bias: bool = True):
        super().__init__()
        pad = 0 if padding == "valid" else kernel_size // 2  # "same" for odd kernels, strided or not
        self.conv = nn.Conv2d(in_channels, filters, kernel_size, stride=strides, padding=pad, bias=use_bias)
        glorot_init(self.conv)
        self.activation = make_activation(activation)

    def forward(self, x):
        return self.activation(self.conv(x))


class MaxPooling2D(nn.MaxPool2d):
    def __init__(self, pool_size: int = 2):
        super().__init__(pool_size)


class Flatten(nn.Module):
    """Flattens in Keras' (height, width, channels) order, free when the tensor is channels_last."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


class Dense(nn.Module):
    def __init__(self, in_features: int, units: int, activation: str | None = None):
        super().__init__()
        self.linear = nn.Linear(in_features, units)
        glorot_init(self.linear)
        self.output_activation = activation if activation in OUTPUT_ACTIVATIONS else None
        self.activation = nn.Identity() if self.output_activation else ACTIVATIONS[activation]()

    def forward(self, x):
        return self.activation(self.linear(x))


class BatchNormalization(nn.BatchNorm2d):
    """Keras' words: `momentum` is the share of the old running statistics kept at each step
    (Keras' 0.99 is PyTorch's 0.01); epsilon 1e-3 as in Keras."""

    def __init__(self, channels: int, momentum: float = 0.99):
        super().__init__(channels, eps=1e-3, momentum=1 - momentum)


class Dropout(nn.Dropout):
    pass


class Activation(nn.Module):
    def __init__(self, activation: str = "relu"):
        super().__init__()
        self.activation = make_activation(activation)

    def forward(self, x):
        return self.activation(x)


class GlobalAveragePooling2D(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class Residual(nn.Module):
    """x + block(x): Keras' `layers.add([x, block(x)])`, as one layer in the summary."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x)


class Sequential(nn.Module):
    """An ordered stack of layers with Keras-style names (conv2d, conv2d_1, ...) and a known input shape."""

    def __init__(self, name: str, input_shape: tuple[int, int, int], layers: list[nn.Module]):
        super().__init__()
        self.model_name = name
        self.input_shape = tuple(input_shape)
        self.layers = nn.ModuleDict(keras_names(layers))
        last = layers[-1]
        self.output_activation = getattr(last, "output_activation", None) or "softmax"

    def forward(self, x):
        layers = list(self.layers.values())
        i = 0
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, Conv2D) and isinstance(layer.activation, nn.ReLU) and isinstance(following, MaxPooling2D):
                # max(relu(x)) == relu(max(x)): pooling first runs the ReLU and its backward
                # on a quarter of the values, the same numbers for about a sixth less time.
                x = torch.relu_(following(layer.conv(x)))
                i += 2
            else:
                x = layer(x)
                i += 1
        return x

    def layer_outputs(self, x) -> dict[str, torch.Tensor]:
        """Every layer's output, layer by layer as declared (for the summary, not speed)."""
        outputs = {}
        for name, layer in self.layers.items():
            x = outputs[name] = layer(x)
        return outputs

    def predict_proba(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, classes] from the logits; one sigmoid unit means two classes."""
        if self.output_activation == "sigmoid":
            p = torch.sigmoid(logits.float()).reshape(-1, 1)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(logits.float(), dim=1)


def keras_names(layers: list[nn.Module]) -> dict[str, nn.Module]:
    """conv2d, max_pooling2d, conv2d_1, ...: Keras' snake_case name, numbered from the second."""
    seen: dict[str, int] = {}
    named = {}
    for layer in layers:
        base = snake_case(type(layer).__name__)
        count = seen.get(base, 0)
        seen[base] = count + 1
        named[base if count == 0 else f"{base}_{count}"] = layer
    return named


def snake_case(name: str) -> str:
    out = ""
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper() and not name[i - 1].isdigit():
            out += "_"
        out += ch.lower()
    return out
