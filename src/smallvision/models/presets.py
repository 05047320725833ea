"""The named networks, as layer lists in Keras' words: the seed's convnets exactly, and our own faster ones.

Each is a function of the classes and the Dropout rate that returns its layers; `Sequential` infers
every shape from the input, so none of them counts channels or sides. A run's model.json holds the
list itself, so a run reloads without this file knowing its name.
"""

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
    Layer,
    MaxPooling2D,
    Residual,
    ZeroPadding2D,
)


def softmax_output(num_classes: int) -> Dense:
    """Dense(N, softmax), as the seed's MNIST network ends."""
    return Dense(num_classes, activation="softmax")


def binary_or_softmax_output(num_classes: int) -> Dense:
    """Dense(1, sigmoid) for two classes, as the seed's cats-vs-dogs network ends; Dense(N, softmax) otherwise."""
    return Dense(1, activation="sigmoid") if num_classes == 2 else softmax_output(num_classes)


def mnist_convnet(num_classes: int = 10, dropout: float = 0.0) -> list[Layer]:
    """The seed's MNIST network: three 3x3 convolutions, two poolings, Dense(64), Dense(10)."""
    if dropout:
        raise SmallvisionError("mnist_convnet has no Dropout layer; leave dropout at 0 for it")
    return [Conv2D(32, (3, 3), activation="relu"), MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu"), MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu"),
            Flatten(), Dense(64, activation="relu"), softmax_output(num_classes)]


def mnist_slim(num_classes: int = 10, dropout: float = 0.0) -> list[Layer]:
    """The seed's MNIST network with half the filters in its first two convolutions (16, 32, 64): the second
    convolution, two thirds of the seed's work, does a quarter of it, so a step costs under a third of the seed's
    FLOPs (5.0 against 16.4 MFLOP an image, forward and backward). Trained hot (fast-mnist) it reaches the
    seed's accuracy in 2 epochs, at about twice the seed's images/s in fp32 on an AVX2 CPU, where small
    convolutions are far from the matmul peak and the fewer of them the better."""
    if dropout:
        raise SmallvisionError("mnist_slim has no Dropout layer; leave dropout at 0 for it")
    return [Conv2D(16, (3, 3), activation="relu"), MaxPooling2D((2, 2)),
            Conv2D(32, (3, 3), activation="relu"), MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu"),
            Flatten(), Dense(64, activation="relu"), softmax_output(num_classes)]


def catsdogs_convnet(num_classes: int = 2, dropout: float = 0.0) -> list[Layer]:
    """The seed's cats-vs-dogs network: four Conv2D/MaxPooling2D pairs (32, 64, 128, 128 filters),
    Flatten, Dropout when asked (the seed's 0.5 with augmentation), Dense(512, relu), and
    Dense(1, sigmoid) for two classes."""
    layers: list[Layer] = []
    for filters in (32, 64, 128, 128):
        layers += [Conv2D(filters, (3, 3), activation="relu"), MaxPooling2D((2, 2))]
    layers.append(Flatten())
    if dropout:
        layers.append(Dropout(dropout))
    return layers + [Dense(512, activation="relu"), binary_or_softmax_output(num_classes)]


def small_convnet(num_classes: int = 10, dropout: float = 0.0) -> list[Layer]:
    """The seed's convolution stack (32, 64, 64 filters, two poolings) with 'same' padding, ending in
    global average pooling and Dense(N, softmax) instead of Flatten and Dense(64): every cell of the last
    map is scored by the same weights, so its Grad-CAM heatmaps are sharp (the synthetic check in
    docs/looking-inside.md), and it takes images of any size from 8x8 up."""
    layers: list[Layer] = [Conv2D(32, 3, padding="same", activation="relu"), MaxPooling2D(2),
                           Conv2D(64, 3, padding="same", activation="relu"), MaxPooling2D(2),
                           Conv2D(64, 3, padding="same", activation="relu"), GlobalAveragePooling2D()]
    if dropout:
        layers.append(Dropout(dropout))
    return layers + [softmax_output(num_classes)]


def conv_bn_relu(filters: int) -> list[Layer]:
    return [Conv2D(filters, 3, padding="same", use_bias=False), BatchNormalization(momentum=0.9), Activation("relu")]


def small_resnet(num_classes: int = 2, dropout: float = 0.0, widths: tuple[int, ...] = (24, 48, 96, 192)) -> list[Layer]:
    """Our from-scratch network for small photo sets: a strided stem, then per stage a convolution,
    2x2 pooling (before batch norm, on a quarter of the values) and a two-convolution residual block;
    global average pooling and Dense(N, softmax). Batch norm lets it train hot; its running statistics
    follow with momentum 0.9 (not Keras' 0.99), so they are right after short runs too. Per image it
    costs about half of the seed's network at 150x150. The stem pads one pixel on every side (Keras'
    'same' would pad only after, at an even size), as it always has, so earlier runs keep their numbers."""
    layers = [ZeroPadding2D(1), Conv2D(widths[0], 3, strides=2, use_bias=False),
              BatchNormalization(momentum=0.9), Activation("relu")]
    for _, current in pairwise(widths):
        layers += [Conv2D(current, 3, padding="same", use_bias=False), MaxPooling2D(2),
                   BatchNormalization(momentum=0.9), Activation("relu"),
                   Residual(conv_bn_relu(current) + conv_bn_relu(current))]
    layers.append(GlobalAveragePooling2D())
    if dropout:
        layers.append(Dropout(dropout))
    return layers + [softmax_output(num_classes)]
