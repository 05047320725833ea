"""Networks by name or as layer lists: `create_model("mnist_convnet", input_shape, num_classes)`,
`build_network(layers, input_shape, num_classes)`."""

from smallvision.errors import SmallvisionError, unknown_name
from smallvision.models.layers import Layer, Sequential
from smallvision.models.presets import catsdogs_convnet, mnist_convnet, small_convnet, small_resnet
from smallvision.models.summary import count_parameters, summary

# name -> (the function giving its layers for (num_classes, dropout), its default input (C, H, W), default classes)
MODELS = {
    "mnist_convnet": (mnist_convnet, (1, 28, 28), 10),
    "catsdogs_convnet": (catsdogs_convnet, (3, 150, 150), 2),
    "small_convnet": (small_convnet, (3, 64, 64), 10),
    "small_resnet": (small_resnet, (3, 112, 112), 2),
}
CUSTOM = "custom"  # a run's model name when its network was given as layers


def model_names() -> list[str]:
    return sorted(MODELS)


def default_input_shape(name: str) -> tuple[int, int, int]:
    if name not in MODELS:
        raise unknown_name("model", name, model_names())
    return MODELS[name][1]


def named_layers(name: str, num_classes: int | None = None, dropout: float = 0.0) -> list[Layer]:
    """A named network's layer list."""
    if name not in MODELS:
        raise unknown_name("model", name, model_names())
    layers, _, classes = MODELS[name]
    return layers(num_classes or classes, dropout)


def build_network(layers: list[Layer], input_shape, num_classes: int | None = None, name: str = CUSTOM) -> Sequential:
    """A layer list built for `input_shape` (C, H, W); with `num_classes`, its end checked against them."""
    model = Sequential(layers, input_shape, name=name)
    if model.input_shape is None:
        raise SmallvisionError(f"{name}: the input shape is unknown; start the layers with "
                               f"Input(shape=(height, width, channels))")
    if num_classes is not None:
        model.check_classes(num_classes)
    return model


def create_model(name: str, input_shape=None, num_classes: int | None = None, dropout: float = 0.0,
                 backbone: str | None = None, pretrained: bool = True):
    """The network `name` for `input_shape` (channels, height, width) and `num_classes`; defaults: the seed's.

    With `backbone`, timm's pretrained network of that name with a new head instead (`name` is unused).
    """
    if backbone:
        from smallvision.models.backbones import BackboneClassifier, backbone_preprocessing  # timm is slow to import

        shape = input_shape or backbone_preprocessing(backbone)["input_size"]
        return BackboneClassifier(backbone, shape, num_classes or 2, dropout, pretrained)  # 2: the seed's cats and dogs
    layers = named_layers(name, num_classes, dropout)
    return build_network(layers, tuple(input_shape or default_input_shape(name)), name=name)


__all__ = ["CUSTOM", "MODELS", "Sequential", "build_network", "count_parameters", "create_model",
           "default_input_shape", "model_names", "named_layers", "summary"]
