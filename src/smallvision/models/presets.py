"""The named networks: the seed's convnets exactly, and our own faster ones."""

from itertools import pairwise

from smallvision.errors import SmallvisionError
from smallvision.models.layers import (
    Activation,
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    MaxPooling2D,
    Residual,
    Sequential,
)


def output_layer(in_features: int, num_classes: int) -> Dense:
    """Dense(N, softmax), as the seed's MNIST network ends."""
    return Dense(in_features, num_classes, "softmax")


def binary_or_softmax_output(in_features: int, num_classes: int) -> Dense:
    """Dense(1, sigmoid) for two classes, as the seed's cats-vs-dogs network ends; Dense(N, softmax) otherwise."""
    return Dense(in_features, 1, "sigmoid") if num_classes == 2 else output_layer(in_features, num_classes)


def valid_side(side: int, convolutions: int) -> int:
    """The side left after `convolutions` rounds of a 3x3 'valid' convolution and a 2x2 pooling."""
    for _ in range(convolutions):
        side = (side - 2) // 2
    return side


def mnist_convnet(input_shape=(1, 28, 28), num_classes=10, dropout: float = 0.0) -> Sequential:
    """The seed's MNIST network: three 3x3 convolutions, two poolings, Dense(64), Dense(10)."""
    if dropout:
        raise SmallvisionError("mnist_convnet has no Dropout layer; leave dropout at 0 for it")
    channels, height, width = input_shape
    side_h, side_w = valid_side(height, 2) - 2, valid_side(width, 2) - 2  # two conv+pool rounds, then a conv
    return Sequential("mnist_convnet", input_shape, [
        Conv2D(channels, 32, 3),
        MaxPooling2D(2),
        Conv2D(32, 64, 3),
        MaxPooling2D(2),
        Conv2D(64, 64, 3),
        Flatten(),
        Dense(side_h * side_w * 64, 64, "relu"),
        output_layer(64, num_classes),
    ])


def catsdogs_convnet(input_shape=(3, 150, 150), num_classes=2, dropout: float = 0.0) -> Sequential:
    """The seed's cats-vs-dogs network: four Conv2D/MaxPooling2D pairs (32, 64, 128, 128 filters),
    Flatten, Dropout when asked (the seed's 0.5 with augmentation), Dense(512, relu), and
    Dense(1, sigmoid) for two classes."""
    channels, height, width = input_shape
    side_h, side_w = valid_side(height, 4), valid_side(width, 4)
    if min(side_h, side_w) < 1:
        raise SmallvisionError(f"catsdogs_convnet needs images of at least 46x46 pixels, got {height}x{width}")
    layers = [
        Conv2D(channels, 32, 3), MaxPooling2D(2),
        Conv2D(32, 64, 3), MaxPooling2D(2),
        Conv2D(64, 128, 3), MaxPooling2D(2),
        Conv2D(128, 128, 3), MaxPooling2D(2),
        Flatten(),
    ]
    if dropout:
        layers.append(Dropout(dropout))
    layers += [Dense(side_h * side_w * 128, 512, "relu"), binary_or_softmax_output(512, num_classes)]
    return Sequential("catsdogs_convnet", input_shape, layers)


def small_convnet(input_shape=(3, 64, 64), num_classes=10, dropout: float = 0.0) -> Sequential:
    """The seed's convolution stack (32, 64, 64 filters, two poolings) with 'same' padding, ending in
    global average pooling and Dense(N, softmax) instead of Flatten and Dense(64): every cell of the last
    map is scored by the same weights, so its Grad-CAM heatmaps are sharp (the synthetic check in the
    README), and it takes images of any size from 8x8 up."""
    channels, height, width = input_shape
    layers = [Conv2D(channels, 32, 3, padding="same"), MaxPooling2D(2),
              Conv2D(32, 64, 3, padding="same"), MaxPooling2D(2),
              Conv2D(64, 64, 3, padding="same"), GlobalAveragePooling2D()]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(output_layer(64, num_classes))
    return Sequential("small_convnet", input_shape, layers)


def conv_bn_relu(in_channels: int, filters: int, strides: int = 1) -> list:
    return [Conv2D(in_channels, filters, 3, activation=None, padding="same", strides=strides, use_bias=False),
            BatchNormalization(filters, momentum=0.9), Activation("relu")]


def small_resnet(input_shape=(3, 112, 112), num_classes=2, dropout: float = 0.0,
                 widths: tuple[int, ...] = (24, 48, 96, 192)) -> Sequential:
    """Our from-scratch network for small photo sets: a strided stem, then per stage a convolution,
    2x2 pooling (before batch norm, on a quarter of the values) and a two-convolution residual block;
    global average pooling and Dense(N, softmax). Batch norm lets it train hot; its running statistics
    follow with momentum 0.9 (not Keras' 0.99), so they are right after short runs too. Per image it
    costs about half of the seed's network at 150x150."""
    channels, height, width = input_shape
    if min(height, width) < 32:
        raise SmallvisionError(f"small_resnet needs images of at least 32x32 pixels, got {height}x{width}")
    layers = conv_bn_relu(channels, widths[0], strides=2)
    for previous, current in pairwise(widths):
        layers += [Conv2D(previous, current, 3, activation=None, padding="same", use_bias=False), MaxPooling2D(2),
                   BatchNormalization(current, momentum=0.9), Activation("relu"),
                   Residual(conv_bn_relu(current, current) + conv_bn_relu(current, current))]
    layers.append(GlobalAveragePooling2D())
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(output_layer(widths[-1], num_classes))
    return Sequential("small_resnet", input_shape, layers)
