"""The named networks: the seed's convnets exactly, and our own faster ones."""

from smallvision.models.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential


def output_layer(in_features: int, num_classes: int) -> Dense:
    """Dense(N, softmax), as the seed's MNIST network ends."""
    return Dense(in_features, num_classes, "softmax")


def mnist_convnet(input_shape=(1, 28, 28), num_classes=10) -> Sequential:
    """The seed's MNIST network: three 3x3 convolutions, two poolings, Dense(64), Dense(10)."""
    channels, height, width = input_shape
    side_h, side_w = ((height - 2) // 2 - 2) // 2 - 2, ((width - 2) // 2 - 2) // 2 - 2
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

