"""Networks by name: `create_model("mnist_convnet", input_shape, num_classes)`."""

from smallvision.errors import unknown_name
from smallvision.models.layers import Sequential
from smallvision.models.presets import catsdogs_convnet, mnist_convnet, small_convnet, small_resnet
from smallvision.models.summary import count_parameters, summary

MODELS = {
    "mnist_convnet": (mnist_convnet, (1, 28, 28)),
    "catsdogs_convnet": (catsdogs_convnet, (3, 150, 150)),
    "small_convnet": (small_convnet, (3, 64, 64)),
    "small_resnet": (small_resnet, (3, 112, 112)),
}


def model_names() -> list[str]:
    return sorted(MODELS)


def default_input_shape(name: str) -> tuple[int, int, int]:
    if name not in MODELS:
        raise unknown_name("model", name, model_names())
    return MODELS[name][1]


def create_model(name: str, input_shape=None, num_classes: int | None = None, dropout: float = 0.0,
                 backbone: str | None = None, pretrained: bool = True):
    """The network `name` for `input_shape` (channels, height, width) and `num_classes`; defaults: the seed's.

    With `backbone`, timm's pretrained network of that name with a new head instead (`name` is unused).
    """
    if backbone:
        from smallvision.models.backbones import BackboneClassifier, backbone_preprocessing  # timm is slow to import

        shape = input_shape or backbone_preprocessing(backbone)["input_size"]
        return BackboneClassifier(backbone, shape, num_classes or 2, dropout, pretrained)  # 2: the seed's cats and dogs
    if name not in MODELS:
        raise unknown_name("model", name, model_names())
    build, default_shape = MODELS[name]
    options = {"dropout": dropout}
    if num_classes is not None:
        options["num_classes"] = num_classes
    return build(tuple(input_shape or default_shape), **options)


__all__ = ["MODELS", "Sequential", "count_parameters", "create_model", "default_input_shape", "model_names", "summary"]
