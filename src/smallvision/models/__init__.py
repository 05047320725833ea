"""The registry: networks by name or as layer lists (`create_model("mnist_convnet", input_shape, num_classes)`,
`build_network(layers, input_shape, num_classes)`), and a recipe's network (`recipe_image_shape`,
`recipe_model`, `with_backbone_preprocessing`), the one place a recipe becomes a network."""

from smallvision.errors import SmallvisionError, unknown_name
from smallvision.models.layer_text import parse_layers
from smallvision.models.layers import Layer, Sequential, declared_input_shape
from smallvision.models.presets import catsdogs_convnet, mnist_convnet, mnist_slim, small_convnet, small_resnet
from smallvision.models.summary import count_parameters, summary
from smallvision.recipe import Recipe

# name -> (the function giving its layers for (num_classes, dropout), its default input (C, H, W), default classes)
MODELS = {
    "mnist_convnet": (mnist_convnet, (1, 28, 28), 10),
    "mnist_slim": (mnist_slim, (1, 28, 28), 10),
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

# --- a recipe's network: what it takes, what it is, and the data config that travels with a pretrained one


def recipe_image_shape(recipe: Recipe) -> tuple[int, int, int] | None:
    """(channels, height, width) that image folders are decoded to for this recipe; None when a layer list
    says nothing of it (no Input, no image_size): an IDX source's images have their own shape."""
    if recipe.network.backbone:
        from smallvision.models.backbones import backbone_preprocessing  # timm is slow to import

        channels, height, width = backbone_preprocessing(recipe.network.backbone)["input_size"]
    elif recipe.network.layers:
        declared = declared_input_shape(parse_layers(recipe.network.layers))
        if declared:
            return declared  # the network says what it takes; image_size and color_mode give way
        if recipe.data.image_size is None:
            return None
        channels, height, width = 3, recipe.data.image_size, recipe.data.image_size
    else:
        channels, height, width = default_input_shape(recipe.network.model)
    if recipe.data.image_size:
        height = width = recipe.data.image_size
    if recipe.data.color_mode:
        channels = 3 if recipe.data.color_mode == "rgb" else 1
    return channels, height, width


def recipe_model(recipe: Recipe, input_shape: tuple[int, int, int], num_classes: int, pretrained: bool = True):
    """The network a recipe trains, built for the data: its layers, a named network's layers, or a
    pretrained backbone with a new head."""
    if recipe.network.backbone:
        return create_model(recipe.network.model, input_shape, num_classes, recipe.network.dropout,
                            recipe.network.backbone, pretrained)
    if recipe.network.layers:
        return build_network(parse_layers(recipe.network.layers), input_shape, num_classes)
    return build_network(named_layers(recipe.network.model, num_classes, recipe.network.dropout), input_shape,
                         num_classes, name=recipe.network.model)


def with_backbone_preprocessing(recipe: Recipe) -> Recipe:
    """The recipe with the backbone's own input size, mean and std where it leaves them unset."""
    if not recipe.network.backbone:
        return recipe
    from smallvision.models.backbones import backbone_preprocessing

    config = backbone_preprocessing(recipe.network.backbone)
    return recipe.replace(image_size=recipe.data.image_size or config["input_size"][1],
                          mean=config["mean"] if recipe.preprocess.mean is None else recipe.preprocess.mean,
                          std=config["std"] if recipe.preprocess.std is None else recipe.preprocess.std)


__all__ = ["CUSTOM", "MODELS", "Sequential", "build_network", "count_parameters", "create_model",
           "default_input_shape", "model_names", "named_layers", "recipe_image_shape", "recipe_model", "summary",
           "with_backbone_preprocessing"]
