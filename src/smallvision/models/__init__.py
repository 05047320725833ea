"""Networks by name: `create_model("mnist_convnet", input_shape, num_classes)`."""

from smallvision.errors import unknown_name
from smallvision.models.layers import Sequential
from smallvision.models.presets import mnist_convnet
from smallvision.models.summary import count_parameters, summary

MODELS = {
    "mnist_convnet": (mnist_convnet, (1, 28, 28)),
}


def model_names() -> list[str]:
    return sorted(MODELS)


def default_input_shape(name: str) -> tuple[int, int, int]:
    if name not in MODELS:
        raise unknown_name("model", name, model_names())
    return MODELS[name][1]


def create_model(name: str, input_shape=None, num_classes: int = 10) -> Sequential:
    if name not in MODELS:
        raise unknown_name("model", name, model_names())
    build, default_shape = MODELS[name]
    return build(tuple(input_shape or default_shape), num_classes)


__all__ = ["MODELS", "create_model", "model_names", "default_input_shape", "summary", "count_parameters", "Sequential"]
