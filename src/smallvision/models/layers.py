"""Keras' layer vocabulary on PyTorch, with Keras' argument names and defaults, and shapes inferred.

A layer is made from Keras' arguments alone (`Conv2D(32, (3, 3), activation="relu")`); `Sequential`
builds each one once the shape coming into it is known, as Keras does, so nobody counts channels.
Maps are [N, C, H, W] inside (channels_last in memory), but shapes are spoken of as Keras prints
them, (H, W, C).

The last layer's softmax or sigmoid is recorded, not applied: the loss works on its inputs (logits),
which is the numerically stable form of the same computation, and `Sequential.predict_proba`
applies it.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from smallvision import distributed
from smallvision.errors import SmallvisionError, unknown_name

OUTPUT_ACTIVATIONS = ("softmax", "sigmoid")
REQUIRED = object()


def leaky_relu(negative_slope: float):
    return lambda x: F.leaky_relu(x, negative_slope)


# Keras' activations by name, as functions of a tensor; "relu" also works in place (see Sequential).
ACTIVATIONS = {
    "relu": torch.relu, "sigmoid": torch.sigmoid, "softmax": lambda x: torch.softmax(x, dim=1), "tanh": torch.tanh,
    "elu": F.elu, "selu": F.selu, "gelu": F.gelu, "swish": F.silu, "silu": F.silu,
    "leaky_relu": leaky_relu(0.2),  # Keras' leaky_relu function; the LeakyReLU layer's default is 0.3
    "linear": None, None: None,
}


# --- arguments: each checker takes (layer, argument, value) and returns the value in its normal form


def fail(layer: str, argument: str, wanted: str, value) -> SmallvisionError:
    return SmallvisionError(f"{layer}: {argument} must be {wanted}, got {value!r}")


def positive_int(layer, argument, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(layer, argument, "a whole number of at least 1", value)
    return value


def pair(layer, argument, value):
    """An int or a pair of ints, as Keras takes kernel sizes, strides and pool sizes: always a pair."""
    values = list(value) if isinstance(value, (tuple, list)) else [value, value]
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise fail(layer, argument, "a whole number of at least 1, or a pair of them", value)
    return tuple(values)


def optional_pair(layer, argument, value):
    return None if value is None else pair(layer, argument, value)


def padding_mode(layer, argument, value):
    if not isinstance(value, str) or value.lower() not in ("valid", "same"):
        raise fail(layer, argument, "'valid' or 'same'", value)
    return value.lower()


def activation_name(layer, argument, value):
    if value is not None and not isinstance(value, str):
        raise fail(layer, argument, "an activation's name", value)
    if value not in ACTIVATIONS:
        raise unknown_name(f"{layer} activation", value, [name for name in ACTIVATIONS if name])
    return value


def boolean(layer, argument, value):
    if not isinstance(value, bool):
        raise fail(layer, argument, "True or False", value)
    return value


def number(layer, argument, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(layer, argument, "a number", value)
    return float(value)


def non_negative(layer, argument, value):
    value = number(layer, argument, value)
    if value < 0:
        raise fail(layer, argument, "a number of at least 0", value)
    return value


def rate(layer, argument, value):
    value = number(layer, argument, value)
    if not 0 <= value < 1:
        raise fail(layer, argument, "a fraction in [0, 1)", value)
    return value


def optional_number(layer, argument, value):
    return None if value is None else non_negative(layer, argument, value)


def channel_axis(layer, argument, value):
    if value not in (-1, 3):
        raise fail(layer, argument, "-1 (the channels; no other axis is supported)", value)
    return -1


def zero_padding(layer, argument, value):
    """Keras' ZeroPadding2D padding: n, (rows, columns) or ((top, bottom), (left, right)); always the last."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        value = ((value[0], value[0]), (value[1], value[1]))
    try:
        (top, bottom), (left, right) = value
        if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (top, bottom, left, right)):
            return (top, bottom), (left, right)
    except (TypeError, ValueError):
        pass
    raise fail(layer, argument, "n, (rows, columns) or ((top, bottom), (left, right)) in whole pixels", value)


def image_shape(layer, argument, value):
    """Keras' Input shape, (height, width, channels)."""
    if (not isinstance(value, (tuple, list)) or len(value) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
        raise fail(layer, argument, "(height, width, channels)", value)
    return tuple(value)


def any_layers(layer, argument, value):
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, Layer) for v in value):
        raise fail(layer, argument, "a non-empty list of layers", value)
    return list(value)


# --- geometry


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Keras' (TensorFlow's) 'same' padding on one axis: (before, after). When the total is odd the
    extra pixel goes after (bottom, right), which matters with a stride of 2 on an even size."""
    effective = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def output_side(size: int, kernel: int, stride: int, padding: str, dilation: int = 1) -> int:
    if padding == "same":
        return math.ceil(size / stride)
    return (size - ((kernel - 1) * dilation + 1)) // stride + 1


def describe(shape: tuple) -> str:
    """A shape as Keras prints it: (H, W, C) for maps, (F,) for vectors."""
    if len(shape) == 3:
        return f"{shape[1]}x{shape[2]}x{shape[0]}"
    return f"{shape[0]} values"


# --- the layers


class Layer(nn.Module):
    """A Keras layer: made from Keras' arguments (ARGS: name, default, checker, in Keras' order), built
    by `build(shape)` once the shape coming in is known ([C, H, W] for maps, [F] for vectors), which
    makes its weights and returns the shape going out."""

    ARGS: tuple = ()
    ALIASES: dict[str, str] = {}  # Keras 2's names for an argument Keras 3 renamed

    def __init__(self, *args, name: str | None = None, input_shape=None, **kwargs):
        super().__init__()
        kind = type(self).__name__
        names = [arg[0] for arg in self.ARGS]
        if len(args) > len(names):
            raise SmallvisionError(f"{kind} takes at most {len(names)} arguments without names ({', '.join(names)}), "
                                   f"got {len(args)}")
        given = dict(zip(names, args))
        for key, value in kwargs.items():
            key = self.ALIASES.get(key, key)
            if key not in names:
                raise unknown_name(f"{kind} argument", key, names + ["name"])
            if key in given:
                raise SmallvisionError(f"{kind}: {key} is given twice")
            given[key] = value
        self.config = {}
        for argument, default, check in self.ARGS:
            if argument not in given and default is REQUIRED:
                raise SmallvisionError(f"{kind} needs {argument} (Keras' {kind}({', '.join(names[:2])}, ...))")
            value = given.get(argument, default)
            self.config[argument] = value if argument not in given and default is None else check(kind, argument, value)
        self.layer_name = name  # Keras' name=, which the summary and --layer then use
        self.input_shape_hint = image_shape(kind, "input_shape", input_shape) if input_shape is not None else None
        self.built_shape: tuple | None = None  # the shape it gives, once built

    def build_named(self, name: str, shape: tuple) -> tuple:
        """Make the weights for inputs of `shape`; return the output's shape. `name` is for errors."""
        return shape

    def shrinks_to_nothing(self, name: str, shape: tuple, out: tuple) -> SmallvisionError:
        return SmallvisionError(f"{name} ({type(self).__name__}) receives a {describe(shape)} map and would leave "
                                f"{describe(out)}: the maps shrink to nothing; use larger images (--image-size), "
                                f"padding='same', or fewer poolings")

    def check_map(self, name: str, shape: tuple) -> None:
        if len(shape) != 3:
            raise SmallvisionError(f"{name} ({type(self).__name__}) needs a feature map but receives {describe(shape)}; "
                                   f"it belongs before Flatten or global pooling")

    def as_output(self) -> str | None:
        """Called on the network's last layer: stop applying a final softmax or sigmoid and return it."""
        return None


def make_activation(name: str | None):
    return ACTIVATIONS[name]


class Input(Layer):
    """Keras' Input(shape=(height, width, channels)): the network's input shape, not a layer of its own."""

    ARGS = (("shape", REQUIRED, image_shape),)

    @property
    def chw(self) -> tuple[int, int, int]:
        height, width, channels = self.config["shape"]
        return channels, height, width


class Rescaling(Layer):
    ARGS = (("scale", REQUIRED, number), ("offset", 0.0, number))

    def forward(self, x):
        return x * self.config["scale"] + self.config["offset"]


class ActivationMixin:
    """The activation a layer applies after its own work; the last layer's softmax or sigmoid is recorded instead."""

    def as_output(self) -> str | None:
        if self.config.get("activation") in OUTPUT_ACTIVATIONS:
            self.activation = None
            return self.config["activation"]
        return None

    def activate(self, x, fresh: bool = False):
        """`fresh`: x is this layer's own new output, which a ReLU may overwrite (no copy)."""
        if self.activation is None:
            return x
        return torch.relu_(x) if fresh and self.activation is torch.relu else self.activation(x)


class Padded(Layer):
    """A layer that slides a window over the map: 'valid' or Keras' 'same' padding, exactly."""

    def window(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(kernel, strides, dilation), each (rows, columns)."""
        raise NotImplementedError

    def symmetric_everywhere(self) -> bool:
        """Whether 'same' padding is the same before and after on both axes whatever the input's size: with
        a stride of 1 and an odd (dilated) kernel. Otherwise the layer pads by hand, size by size."""
        kernel, strides, dilation = self.window()
        return all(s == 1 and (k - 1) * d % 2 == 0 for k, s, d in zip(kernel, strides, dilation))

    def conv_padding(self, shape: tuple) -> int | tuple[int, int]:
        """What nn.Conv2d pads with for inputs of `shape`: the symmetric (top, left) padding, or 0 where the
        layer pads by hand (self.pad_by_hand, decided here)."""
        self.pad_by_hand = self.config["padding"] == "same" and not self.symmetric_everywhere()
        return 0 if self.pad_by_hand else self.pads(shape[1], shape[2])[::2]

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for an input of this size."""
        if self.config["padding"] == "valid":
            return 0, 0, 0, 0
        kernel, strides, dilation = self.window()
        top, bottom = same_padding(height, kernel[0], strides[0], dilation[0])
        left, right = same_padding(width, kernel[1], strides[1], dilation[1])
        return top, bottom, left, right

    def out_shape(self, name: str, shape: tuple, channels: int) -> tuple:
        self.check_map(name, shape)
        kernel, strides, dilation = self.window()
        sides = [output_side(shape[1 + axis], kernel[axis], strides[axis], self.config["padding"], dilation[axis])
                 for axis in (0, 1)]
        out = (channels, *sides)
        if min(sides) < 1:
            raise self.shrinks_to_nothing(name, shape, (channels, max(sides[0], 0), max(sides[1], 0)))
        return out


def glorot_init(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """Keras' glorot_uniform: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out)), computed as
    torch.nn.init.xavier_uniform_ does, so the same seed gives the same weights to the bit."""
    limit = math.sqrt(3.0) * math.sqrt(2.0 / float(fan_in + fan_out))
    with torch.no_grad():
        weight.uniform_(-limit, limit)


class Conv2D(ActivationMixin, Padded):
    ARGS = (("filters", REQUIRED, positive_int), ("kernel_size", REQUIRED, pair), ("strides", (1, 1), pair),
            ("padding", "valid", padding_mode), ("dilation_rate", (1, 1), pair), ("activation", None, activation_name),
            ("use_bias", True, boolean))

    def window(self):
        return self.config["kernel_size"], self.config["strides"], self.config["dilation_rate"]

    def build_named(self, name: str, shape: tuple) -> tuple:
        channels = shape[0]
        out_channels, groups = self.conv_channels(channels)
        out = self.out_shape(name, shape, out_channels)
        kernel, strides, dilation = self.window()
        self.conv = nn.Conv2d(channels, out_channels, kernel, stride=strides, padding=self.conv_padding(shape),
                              dilation=dilation, groups=groups, bias=self.config["use_bias"])
        self.glorot(self.conv.weight, channels, out_channels, groups)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)
        self.activation = make_activation(self.config["activation"])
        return out

    def conv_channels(self, channels: int) -> tuple[int, int]:
        return self.config["filters"], 1

    def glorot(self, weight, channels: int, out_channels: int, groups: int) -> None:
        receptive = weight.shape[2] * weight.shape[3]
        glorot_init(weight, receptive * channels // groups, receptive * out_channels // groups)

    def convolve(self, x):
        """The convolution without the activation, with Keras' padding."""
        if self.pad_by_hand:  # Keras puts an odd pixel of 'same' padding after (bottom, right)
            top, bottom, left, right = self.pads(x.shape[2], x.shape[3])
            x = F.pad(x, (left, right, top, bottom))
        return self.conv(x)

    def forward(self, x):
        return self.activate(self.convolve(x), fresh=True)


class DepthwiseConv2D(Conv2D):
    ARGS = (("kernel_size", REQUIRED, pair), ("strides", (1, 1), pair), ("padding", "valid", padding_mode),
            ("depth_multiplier", 1, positive_int), ("dilation_rate", (1, 1), pair),
            ("activation", None, activation_name), ("use_bias", True, boolean))

    def conv_channels(self, channels: int) -> tuple[int, int]:
        return channels * self.config["depth_multiplier"], channels

    def glorot(self, weight, channels: int, out_channels: int, groups: int) -> None:
        # Keras' depthwise kernel is (kh, kw, channels, multiplier): fans of kh*kw*channels and kh*kw*multiplier
        receptive = weight.shape[2] * weight.shape[3]
        glorot_init(weight, receptive * channels, receptive * self.config["depth_multiplier"])


class SeparableConv2D(Conv2D):
    """A depthwise convolution (one kernel per channel, no bias), then a 1x1 convolution across channels."""

    ARGS = (("filters", REQUIRED, positive_int), ("kernel_size", REQUIRED, pair), ("strides", (1, 1), pair),
            ("padding", "valid", padding_mode), ("dilation_rate", (1, 1), pair), ("depth_multiplier", 1, positive_int),
            ("activation", None, activation_name), ("use_bias", True, boolean))

    def build_named(self, name: str, shape: tuple) -> tuple:
        channels, multiplier, filters = shape[0], self.config["depth_multiplier"], self.config["filters"]
        out = self.out_shape(name, shape, filters)
        kernel, strides, dilation = self.window()
        self.conv = nn.Conv2d(channels, channels * multiplier, kernel, stride=strides, padding=self.conv_padding(shape),
                              dilation=dilation, groups=channels, bias=False)
        receptive = kernel[0] * kernel[1]
        glorot_init(self.conv.weight, receptive * channels, receptive * multiplier)
        self.pointwise = nn.Conv2d(channels * multiplier, filters, 1, bias=self.config["use_bias"])
        glorot_init(self.pointwise.weight, channels * multiplier, filters)
        if self.pointwise.bias is not None:
            nn.init.zeros_(self.pointwise.bias)
        self.activation = make_activation(self.config["activation"])
        return out

    def convolve(self, x):
        return self.pointwise(super().convolve(x))


class Pooling(Padded):
    ARGS = (("pool_size", (2, 2), pair), ("strides", None, optional_pair), ("padding", "valid", padding_mode))

    def window(self):
        return self.config["pool_size"], self.config["strides"] or self.config["pool_size"], (1, 1)

    def build_named(self, name: str, shape: tuple) -> tuple:
        return self.out_shape(name, shape, shape[0])


class MaxPooling2D(Pooling):
    def forward(self, x):
        kernel, strides, _ = self.window()
        top, bottom, left, right = self.pads(x.shape[2], x.shape[3])
        if top or bottom or left or right:  # Keras' 'same' pooling ignores the padding
            x = F.pad(x, (left, right, top, bottom), value=-math.inf)
        return F.max_pool2d(x, kernel, strides)


class AveragePooling2D(Pooling):
    def forward(self, x):
        kernel, strides, _ = self.window()
        top, bottom, left, right = self.pads(x.shape[2], x.shape[3])
        if not (top or bottom or left or right):
            return F.avg_pool2d(x, kernel, strides)
        # Keras' 'same' average counts only the pixels inside the image
        padding = (left, right, top, bottom)
        ones = torch.ones(1, 1, x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        return F.avg_pool2d(F.pad(x, padding), kernel, strides) / F.avg_pool2d(F.pad(ones, padding), kernel, strides)


class GlobalAveragePooling2D(Layer):
    def build_named(self, name, shape):
        self.check_map(name, shape)
        return (shape[0],)

    def forward(self, x):
        return x.mean(dim=(2, 3))


class GlobalMaxPooling2D(GlobalAveragePooling2D):
    def forward(self, x):
        return x.amax(dim=(2, 3))


class Flatten(Layer):
    """Flattens in Keras' (height, width, channels) order, free when the tensor is channels_last."""

    def build_named(self, name, shape):
        return (math.prod(shape),)

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1) if x.dim() == 4 else x.flatten(1)


class Dense(ActivationMixin, Layer):
    ARGS = (("units", REQUIRED, positive_int), ("activation", None, activation_name), ("use_bias", True, boolean))

    def build_named(self, name, shape):
        if len(shape) != 1:
            raise SmallvisionError(f"{name} (Dense) receives a {describe(shape)} map; put Flatten() or "
                                   f"GlobalAveragePooling2D() before it")
        self.linear = nn.Linear(shape[0], self.config["units"], bias=self.config["use_bias"])
        glorot_init(self.linear.weight, shape[0], self.config["units"])
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)
        self.activation = make_activation(self.config["activation"])
        return (self.config["units"],)

    def forward(self, x):
        return self.activate(self.linear(x), fresh=True)


class Dropout(Layer):
    ARGS = (("rate", REQUIRED, rate),)
    DROPOUT = nn.Dropout  # what it zeroes: single values

    def build_named(self, name, shape):
        self.dropout = self.DROPOUT(self.config["rate"])
        return shape

    def forward(self, x):
        return self.dropout(x)


class SpatialDropout2D(Dropout):
    """Drops whole channels of a map."""

    DROPOUT = nn.Dropout2d

    def build_named(self, name, shape):
        self.check_map(name, shape)
        return super().build_named(name, shape)


class BatchNormalization(Layer):
    """Keras' words: `momentum` is the share of the old running statistics kept at each step (Keras' 0.99
    is PyTorch's 0.01); epsilon 1e-3; `center` and `scale` the learned offset and factor. Its tensors are
    named as PyTorch's BatchNorm2d names them."""

    ARGS = (("momentum", 0.99, rate), ("epsilon", 1e-3, non_negative), ("center", True, boolean),
            ("scale", True, boolean))

    def build_named(self, name, shape):
        channels = shape[0]
        self.weight = nn.Parameter(torch.ones(channels)) if self.config["scale"] else None
        self.bias = nn.Parameter(torch.zeros(channels)) if self.config["center"] else None
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        return shape

    def forward(self, x):
        if self.training and distributed.active():
            return self.synced(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            1 - self.config["momentum"], self.config["epsilon"])

    def synced(self, x):
        """Training across several processes: the statistics of the whole batch, as SyncBatchNorm's."""
        mean, variance, count = distributed.batch_norm_statistics(x)
        with torch.no_grad():
            rate = 1 - self.config["momentum"]
            self.running_mean.lerp_(mean, rate)
            self.running_var.lerp_(variance * count / (count - 1).clamp_min(1), rate)  # unbiased, as F.batch_norm
        shape = (1, -1, 1, 1)
        y = (x.float() - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.config["epsilon"])
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y.to(x.dtype)


class Activation(ActivationMixin, Layer):
    ARGS = (("activation", REQUIRED, activation_name),)

    def build_named(self, name, shape):
        self.activation = make_activation(self.config["activation"])
        return shape

    def forward(self, x):
        return self.activate(x)


class ReLU(Layer):
    ARGS = (("max_value", None, optional_number), ("negative_slope", 0.0, non_negative), ("threshold", 0.0, number))

    def forward(self, x):
        slope, threshold, top = self.config["negative_slope"], self.config["threshold"], self.config["max_value"]
        y = torch.where(x >= threshold, x, slope * (x - threshold)) if slope or threshold else torch.relu(x)
        return y.clamp(max=top) if top is not None else y


class LeakyReLU(Layer):
    ARGS = (("negative_slope", 0.3, non_negative),)
    ALIASES = {"alpha": "negative_slope"}

    def forward(self, x):
        return F.leaky_relu(x, self.config["negative_slope"])


class Softmax(Layer):
    ARGS = (("axis", -1, channel_axis),)

    def build_named(self, name, shape):
        self.applied = True
        return shape

    def as_output(self) -> str | None:
        self.applied = False
        return "softmax"

    def forward(self, x):
        return torch.softmax(x, dim=1) if self.applied else x


class ZeroPadding2D(Layer):
    ARGS = (("padding", (1, 1), zero_padding),)

    def build_named(self, name, shape):
        self.check_map(name, shape)
        (top, bottom), (left, right) = self.config["padding"]
        return shape[0], shape[1] + top + bottom, shape[2] + left + right

    def forward(self, x):
        (top, bottom), (left, right) = self.config["padding"]
        return F.pad(x, (left, right, top, bottom))


class Residual(Layer):
    """x + block(x): Keras' `layers.add([x, block(x)])`, as one layer in the summary. Our one word
    beyond Keras' Sequential vocabulary."""

    ARGS = (("layers", REQUIRED, any_layers),)

    def build_named(self, name, shape):
        self.block = nn.Sequential(*self.config["layers"])
        out = shape
        for index, layer in enumerate(self.block):
            out = layer.built_shape = layer.build_named(f"{name}'s layer {index + 1}", out)
        if out != shape:
            raise SmallvisionError(f"{name} (Residual) must give back the shape it receives ({describe(shape)}) to "
                                   f"add it, but its layers give {describe(out)}")
        return shape

    def forward(self, x):
        return x + self.block(x)


VOCABULARY: dict[str, type[Layer]] = {cls.__name__: cls for cls in (
    Input, Rescaling, Conv2D, SeparableConv2D, DepthwiseConv2D, MaxPooling2D, AveragePooling2D,
    GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten, Dense, Dropout, SpatialDropout2D, BatchNormalization,
    Activation, ReLU, LeakyReLU, Softmax, ZeroPadding2D, Residual)}


def declared_input_shape(layers: list[Layer]) -> tuple[int, int, int] | None:
    """(channels, height, width) that a layer list says it takes: an Input first, or Keras 2's
    input_shape= on the first layer; None when it says nothing."""
    if not layers:
        return None
    if isinstance(layers[0], Input):
        return layers[0].chw
    if layers[0].input_shape_hint:
        height, width, channels = layers[0].input_shape_hint
        return channels, height, width
    return None


class Sequential(nn.Module):
    """An ordered stack of Keras layers with Keras-style names (conv2d, conv2d_1, ...), built for an input
    shape (channels, height, width): given here, by an `Input` first, by `input_shape=` on the first
    layer as Keras 2 wrote it, or later by `build` (training builds it for the data's shape)."""

    def __init__(self, layers: list[Layer], input_shape: tuple[int, int, int] | None = None, name: str = "sequential"):
        super().__init__()
        layers = list(layers)
        declared = declared_input_shape(layers)
        if declared:
            if input_shape and tuple(input_shape) != declared:
                raise SmallvisionError(f"the layers say they take {describe(declared)} images, but the images are "
                                       f"{describe(tuple(input_shape))}; change the Input or the image size")
            input_shape = declared
        if layers and isinstance(layers[0], Input):
            layers.pop(0)
        if not layers:
            raise SmallvisionError("a network needs at least one layer")
        if any(isinstance(layer, Input) for layer in layers):
            raise SmallvisionError("Input(shape=...) can only come first")
        self.model_name = name
        self.layers = nn.ModuleDict(keras_names(layers))
        self.input_shape: tuple[int, int, int] | None = None
        self.output_shape: tuple | None = None
        self.output_activation = "softmax"
        # calibration's (calibration.py): the logits are divided by it before the output activation; a plain
        # float, so an exported graph holds it as a constant
        self.temperature = 1.0
        if input_shape:
            self.build(input_shape)

    def build(self, input_shape: tuple[int, int, int]) -> "Sequential":
        """Make every layer's weights for inputs of `input_shape` (channels, height, width)."""
        input_shape = tuple(input_shape)
        if self.input_shape is not None:
            if self.input_shape != input_shape:
                raise SmallvisionError(f"{self.model_name} was built for {describe(self.input_shape)} images, "
                                       f"not {describe(input_shape)}")
            return self
        shape = input_shape
        for name, layer in self.layers.items():
            shape = layer.built_shape = layer.build_named(name, shape)
        layers = list(self.layers.values())
        self.output_activation = layers[-1].as_output() or ("sigmoid" if shape == (1,) else "softmax")
        self.input_shape, self.output_shape = input_shape, shape
        return self

    @property
    def keras_layers(self) -> list[Layer]:
        return list(self.layers.values())

    @property
    def has_rescaling(self) -> bool:
        return any(isinstance(layer, Rescaling) for layer in self.layers.values())

    def check_classes(self, num_classes: int, where: str = "the data") -> None:
        """The end fits the classes: N units for N classes, or one sigmoid unit for two."""
        if self.output_shape is None or len(self.output_shape) != 1:
            raise SmallvisionError(f"{self.model_name} must end in a Dense layer (it gives "
                                   f"{describe(self.output_shape or ())}), one unit per class")
        units = self.output_shape[0]
        if units == num_classes or (units == 1 and num_classes == 2 and self.output_activation == "sigmoid"):
            return
        fix = "Dense(1, activation='sigmoid') or " if num_classes == 2 else ""
        raise SmallvisionError(f"{self.model_name} ends in {units} units but {where} has {num_classes} classes: "
                               f"end it in {fix}Dense({num_classes}, activation='softmax')")

    def forward(self, x):
        return self.run_layers(self.keras_layers, x)

    def features_and_logits(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(the penultimate features [N, D]: what goes into the last Dense layer, the logits): the unknown
        scorer's features (unknown.py) and the answer from one pass."""
        layers = self.keras_layers
        last = max((i for i, layer in enumerate(layers) if isinstance(layer, Dense)), default=None)
        if last is None:
            raise SmallvisionError(f"{self.model_name} has no Dense layer whose input would be its features")
        features = self.run_layers(layers[:last], x)
        return features.flatten(1), self.run_layers(layers[last:], features)

    @staticmethod
    def run_layers(layers: list, x):
        i = 0
        while i < len(layers):
            layer = layers[i]
            following = layers[i + 1] if i + 1 < len(layers) else None
            if (isinstance(layer, Conv2D) and layer.activation is torch.relu and isinstance(following, MaxPooling2D)
                    and following.config["padding"] == "valid"):
                # max(relu(x)) == relu(max(x)): pooling first runs the ReLU and its backward
                # on a quarter of the values, the same numbers for about a sixth less time.
                x = torch.relu_(following(layer.convolve(x)))
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
        """Class probabilities [N, classes] from the logits (divided by the run's temperature, where it has one);
        one sigmoid unit means two classes."""
        logits = logits.float() if self.temperature == 1.0 else logits.float() / self.temperature
        if self.output_activation == "sigmoid":
            p = torch.sigmoid(logits).reshape(-1, 1)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)


def keras_names(layers: list[Layer]) -> dict[str, Layer]:
    """conv2d, max_pooling2d, conv2d_1, ...: Keras' snake_case name, numbered from the second; a layer's
    own name= where it has one."""
    seen: dict[str, int] = {}
    named = {}
    for layer in layers:
        if not isinstance(layer, Layer):
            raise SmallvisionError(f"a network's layers must be smallvision layers (sv.layers.Conv2D, ...), "
                                   f"got {type(layer).__name__}")
        if layer.layer_name:
            if layer.layer_name in named or "." in layer.layer_name:
                raise SmallvisionError(f"layer name {layer.layer_name!r} is used twice or has a '.'")
            named[layer.layer_name] = layer
            continue
        base = snake_case(type(layer).__name__)
        count = seen.get(base, 0)
        while (name := base if count == 0 else f"{base}_{count}") in named:
            count += 1
        seen[base] = count + 1
        named[name] = layer
    return named


def snake_case(name: str) -> str:
    out = ""
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper() and not name[i - 1].isdigit():
            out += "_"
        out += ch.lower()
    return out
