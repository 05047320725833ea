"""Keras model files in: a legacy HDF5 file (`.h5`, as the book's `model.save` and Keras 2 write it) or a
Keras 3 `.keras` archive, turned into a run directory. The model is a Sequential, or a functional model
whose layers follow one another (as the book's second edition builds them: `keras.Input`, then each layer
called on the one before); augmentation layers (RandomFlip, RandomRotation, ...) act only in training, so
the import leaves them out and says so, a nested Sequential of them included.

The architecture comes from the file's JSON config and the weights from its HDF5 datasets, read with
h5py; TensorFlow is not needed, and nothing in the file is executed or unpickled: a layer that would
need its code run (a Lambda, a custom layer) is refused by name. Keras keeps maps channels-last, so
each kernel is turned from (height, width, in, out) to PyTorch's (out, in, height, width); the first
Dense after a Flatten needs nothing, because our Flatten flattens in Keras' (height, width, channels)
order.
"""

import copy
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smallvision.errors import SmallvisionError
from smallvision.models import build_network
from smallvision.models.layers import VOCABULARY, Input, Layer, Sequential, snake_case

KERAS_ARGUMENTS = {  # the config keys each layer takes (Keras 2's spelling beside Keras 3's, where they differ)
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "activation", "use_bias"),
    "SeparableConv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "depth_multiplier",
                        "activation", "use_bias"),
    "DepthwiseConv2D": ("kernel_size", "strides", "padding", "depth_multiplier", "dilation_rate", "activation",
                        "use_bias"),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "AveragePooling2D": ("pool_size", "strides", "padding"),
    "GlobalAveragePooling2D": (), "GlobalMaxPooling2D": (), "Flatten": (),
    "Dense": ("units", "activation", "use_bias"),
    "Dropout": ("rate",), "SpatialDropout2D": ("rate",),
    "BatchNormalization": ("momentum", "epsilon", "center", "scale"),
    "Activation": ("activation",), "ReLU": ("max_value", "negative_slope", "threshold"),
    "LeakyReLU": ("negative_slope", "alpha"), "Softmax": ("axis",), "ZeroPadding2D": ("padding",),
    "Rescaling": ("scale", "offset"),
}
CHAIN_ONLY = ("smallvision imports networks whose layers follow one another (a Sequential, or a functional model "
              "without branches)")
# Identity at inference, so left out of an imported network (RandomCrop is not: it crops at inference too).
AUGMENTATION = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
                "RandomBrightness")
KERAS_ALIASES = {"MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D",
                 "GlobalAvgPool2D": "GlobalAveragePooling2D", "GlobalMaxPool2D": "GlobalMaxPooling2D",
                 "SeparableConvolution2D": "SeparableConv2D", "Convolution2D": "Conv2D"}
WHY_NOT = {"Lambda": "its Python code would have to be run, and smallvision never runs code from a file",
           "TFOpLambda": "it is a TensorFlow operation recorded as code, which smallvision never runs"}


@dataclass
class KerasModel:
    """What a Keras file holds that a run needs: the layers (with Keras' own names), the input shape
    (channels, height, width), and each layer's weights in Keras' order."""

    layers: list[Layer]
    input_shape: tuple[int, int, int]
    weights: dict[str, list[np.ndarray]]
    written_by: str
    left_out: list[str]  # the augmentation layers not imported, as "name (Kind)"


def read_keras_file(path: str | Path) -> KerasModel:
    """A `.h5` or `.keras` file's network and weights, checked; one clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise SmallvisionError(f"{path}: no such file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    try:
        if head.startswith(b"PK"):
            return read_archive(path)
        if head == b"\x89HDF\r\n\x1a\n":
            return read_legacy_h5(path)
    except SmallvisionError:
        raise
    except (OSError, KeyError, ValueError) as err:  # h5py's errors on a damaged or truncated file
        raise SmallvisionError(f"{path}: unreadable ({err}); the file is damaged or incomplete") from None
    raise SmallvisionError(f"{path}: neither an HDF5 file (.h5) nor a Keras archive (.keras)")


def read_archive(path: Path) -> KerasModel:
    """A Keras 3 `.keras` file: a zip of config.json, metadata.json and model.weights.h5."""
    import h5py  # only Keras files need it

    try:
        with zipfile.ZipFile(path) as archive:
            missing = [name for name in ("config.json", "model.weights.h5") if name not in archive.namelist()]
            if missing:
                raise SmallvisionError(f"{path}: a zip file but not a Keras archive ({', '.join(missing)} missing)")
            config = json.loads(archive.read("config.json"))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in archive.namelist() else {}
            metadata = metadata if isinstance(metadata, dict) else {}  # only its keras_version is read, for the record
            weights_bytes = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as err:
        raise SmallvisionError(f"{path}: a damaged Keras archive ({err})") from None
    layers, shape, left_out = layers_from_config(config, path)
    with h5py.File(io.BytesIO(weights_bytes), "r") as store:
        weights = {layer.layer_name: keras3_weights(store, where)
                   for layer, where in zip(layers, keras3_paths([type(layer).__name__ for layer in layers]))}
    return KerasModel(layers, shape, weights, f"Keras {metadata.get('keras_version', '3')}", left_out)


def read_legacy_h5(path: Path) -> KerasModel:
    """A legacy HDF5 model file: the config in the root's attributes, the weights under model_weights/."""
    import h5py

    with h5py.File(path, "r") as store:
        raw = store.attrs.get("model_config")
        if raw is None:
            raise SmallvisionError(f"{path}: an HDF5 file without a model config (weights only, from "
                                   f"save_weights?); save the whole model with model.save(...)")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        version = store.attrs.get("keras_version", b"2")
        layers, shape, left_out = layers_from_config(config, path)
        weights = {layer.layer_name: legacy_weights(store, layer.layer_name, path) for layer in layers}
    return KerasModel(layers, shape, weights, f"Keras {version.decode() if isinstance(version, bytes) else version}",
                      left_out)


def layers_from_config(config: dict, path: Path) -> tuple[list[Layer], tuple[int, int, int], list[str]]:
    """Our layers from a Keras model config (a Sequential, or a functional model without branches, of the
    layers we speak), its input shape (channels, height, width), and the augmentation layers left out."""
    try:
        return read_config(config, path)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as err:  # a value of the wrong kind
        raise SmallvisionError(f"{path}: its model config is not one Keras writes ({type(err).__name__}: "
                               f"{' '.join(str(err).split())[:200]})") from None


def read_config(config: dict, path: Path) -> tuple[list[Layer], tuple[int, int, int], list[str]]:
    kind = config.get("class_name")
    body = config.get("config", {})
    if kind in ("Functional", "Model"):
        entries = functional_chain(body, path)
    elif kind == "Sequential":
        entries = body.get("layers", body) if isinstance(body, dict) else body
    else:
        raise SmallvisionError(f"{path}: a {kind} model; smallvision imports Sequential models and functional "
                               f"models whose layers follow one another")
    shape = body.get("build_input_shape") if isinstance(body, dict) else None
    layers, left_out = [], []
    for entry in entries:
        name = entry.get("config", {}).get("name", "?")
        layer_kind = entry.get("class_name")
        settings = entry.get("config", {})
        declared = settings.get("batch_shape") or settings.get("batch_input_shape")
        if declared:
            shape = declared
        if layer_kind == "InputLayer":
            continue
        if layer_kind in AUGMENTATION:
            left_out.append(f"{name} ({layer_kind})")
        elif layer_kind == "Sequential":  # a model inside the model: the book's data_augmentation
            left_out += nested_augmentation(entry, path)
        else:
            layers.append(layer_from_keras(layer_kind, settings, name, path))
    if not isinstance(shape, list) or len(shape) != 4 or not all(
            type(side) is int and side > 0 for side in shape[1:]):
        raise SmallvisionError(f"{path}: the input shape is not in the file (a model that was never built?); "
                               f"got {' '.join(str(shape).split())[:100]}")
    height, width, channels = shape[1:]
    return layers, (channels, height, width), left_out


def nested_augmentation(entry: dict, path: Path) -> list[str]:
    """A Sequential inside the model, which the import leaves out: it must hold augmentation layers alone."""
    name = entry.get("config", {}).get("name", "?")
    inner = entry.get("config", {}).get("layers", [])
    kinds = [layer.get("class_name") for layer in inner if layer.get("class_name") != "InputLayer"]
    others = [kind for kind in kinds if kind not in AUGMENTATION]
    if others:
        raise SmallvisionError(f"{path}: layer {name!r} is a Sequential model inside the model, with {others[0]} in "
                               f"it; smallvision imports one model's layers (a nested model of augmentation layers "
                               f"alone is left out, as it acts only in training)")
    return [f"{name} ({', '.join(kinds)})"]


def functional_chain(body: dict, path: Path) -> list[dict]:
    """A functional model's layer entries in the order data flows through them, when each layer takes the
    output of the one before (one input, one output, no branch, no merge, no layer called twice); one clear
    error naming the layer where the graph is more than a chain."""
    entries = body.get("layers", [])
    by_name = {entry.get("config", {}).get("name", entry.get("name")): entry for entry in entries}
    ends = {end: tensor_names(body.get(end)) for end in ("input_layers", "output_layers")}
    if len(ends["input_layers"]) != 1 or len(ends["output_layers"]) != 1:
        raise SmallvisionError(f"{path}: a functional model with {len(ends['input_layers'])} inputs and "
                               f"{len(ends['output_layers'])} outputs; smallvision imports one image in, one "
                               f"prediction out")
    following: dict[str, str] = {}
    for name, entry in by_name.items():
        nodes = entry.get("inbound_nodes") or []
        parents = tensor_names(nodes)
        if len(nodes) > 1 or len(parents) > 1:
            what = "is called more than once" if len(nodes) > 1 else f"joins {len(parents)} branches"
            raise SmallvisionError(f"{path}: layer {name!r} ({entry.get('class_name')}) {what}; {CHAIN_ONLY}")
        if parents:
            if parents[0] in following:
                raise SmallvisionError(f"{path}: layer {parents[0]!r} feeds both {following[parents[0]]!r} and "
                                       f"{name!r}; {CHAIN_ONLY}")
            following[parents[0]] = name
    chain, current = [], ends["input_layers"][0]
    while current is not None and len(chain) <= len(by_name):  # bounded: a damaged config may loop back
        chain.append(by_name[current])
        current = following.get(current)
    if chain[-1] is not by_name.get(ends["output_layers"][0]) or len(chain) != len(by_name):
        raise SmallvisionError(f"{path}: the layers from the input do not reach the output one after another; "
                               f"{CHAIN_ONLY}")
    return chain


def tensor_names(value) -> list[str]:
    """The layers whose outputs a config mentions, in order: Keras 3's `keras_history` of each tensor, or
    Keras 2's [layer, node, tensor(, kwargs)] lists (a model's own inputs and outputs are written alike)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"][0]]
        return [name for item in value.values() for name in tensor_names(item)]
    if isinstance(value, list):
        if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
            return [value[0]]
        return [name for item in value for name in tensor_names(item)]
    return []


def layer_from_keras(kind: str, settings: dict, name: str, path: Path) -> Layer:
    where = f"{path}: layer {name!r} ({kind})"
    kind = KERAS_ALIASES.get(kind, kind)
    if kind in WHY_NOT or kind not in KERAS_ARGUMENTS:
        reason = WHY_NOT.get(kind, "not a layer smallvision has (it speaks: " + ", ".join(KERAS_ARGUMENTS) + ")")
        raise SmallvisionError(f"{where}: not supported: {reason}")
    if settings.get("data_format", "channels_last") != "channels_last":
        raise SmallvisionError(f"{where}: data_format {settings['data_format']!r}; only channels_last is supported")
    if settings.get("groups", 1) != 1:
        raise SmallvisionError(f"{where}: grouped convolutions (groups={settings['groups']}) are not supported")
    if kind.startswith("Global") and settings.get("keepdims"):
        raise SmallvisionError(f"{where}: keepdims=True is not supported")
    if kind == "BatchNormalization" and settings.get("axis", -1) not in (-1, 3, [3], [-1]):
        raise SmallvisionError(f"{where}: normalises axis {settings['axis']}; only the channels (-1) are supported")
    arguments = {}
    for key in KERAS_ARGUMENTS[kind]:
        if key in settings and settings[key] is not None:
            value = settings[key]
            if key == "activation":
                if not isinstance(value, str):
                    raise SmallvisionError(f"{where}: a custom activation ({value!r}) cannot be imported")
                value = None if value == "linear" else value
            arguments[key] = value
    if kind == "ReLU" and arguments.get("negative_slope") == 0.0 and arguments.get("threshold") == 0.0:
        arguments.pop("negative_slope"), arguments.pop("threshold")
    try:
        return VOCABULARY[kind](name=name, **arguments)
    except SmallvisionError as err:
        raise SmallvisionError(f"{where}: {err}") from None


def legacy_weights(store, name: str, path: Path) -> list[np.ndarray]:
    """A layer's weights from a legacy HDF5 model file, in Keras' order (weight_names)."""
    group = store.get("model_weights", store).get(name)
    if group is None:
        return []
    names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("weight_names", [])]
    try:
        return [np.asarray(group[n]) for n in names]
    except KeyError as err:
        raise SmallvisionError(f"{path}: layer {name!r} lists weight {err.args[0]} but the file lacks it") from None


def keras3_paths(kinds: list[str]) -> list[str]:
    """Where Keras 3 keeps each layer's weights: not under the layer's own name but its class's, numbered
    in order (conv2d, conv2d_1, ...), as its saving code names a container's members."""
    seen: dict[str, int] = {}
    paths = []
    for kind in kinds:
        base = snake_case(kind)
        seen[base] = seen.get(base, -1) + 1
        paths.append(base if seen[base] == 0 else f"{base}_{seen[base]}")
    return paths


def keras3_weights(store, name: str) -> list[np.ndarray]:
    """A layer's weights from a Keras 3 weights file: layers/NAME/vars/0, 1, ..."""
    group = store.get(f"layers/{name}/vars")
    if group is None:
        return []
    return [np.asarray(group[key]) for key in sorted(group.keys(), key=int)]


# --- weights, Keras' layout to PyTorch's


def place(target: torch.Tensor, value: np.ndarray, what: str) -> None:
    tensor = torch.from_numpy(np.ascontiguousarray(value)).to(target.dtype)
    if tuple(tensor.shape) != tuple(target.shape):
        raise SmallvisionError(f"{what}: the file's weights are {tuple(tensor.shape)}, the config needs "
                               f"{tuple(target.shape)}; the weights do not fit the config")
    with torch.no_grad():
        target.copy_(tensor)


def conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """(height, width, in, out) -> (out, in, height, width)."""
    return kernel.transpose(3, 2, 0, 1)


def keras_conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """conv_kernel's inverse: (out, in, height, width) -> (height, width, in, out)."""
    return kernel.transpose(2, 3, 1, 0)


def depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """(height, width, channels, multiplier) -> (channels * multiplier, 1, height, width): PyTorch's grouped
    output channel c * multiplier + j is Keras' (c, j), as TensorFlow orders a depthwise convolution's outputs."""
    height, width, channels, multiplier = kernel.shape
    return kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, height, width)


def unchanged(value: np.ndarray) -> np.ndarray:
    return value


def keras_variables(layer: Layer) -> list[tuple[torch.Tensor, object, object]]:
    """A layer's tensors in Keras' order, each with its map from Keras' layout to PyTorch's and back:
    the one description that reading and writing Keras files share."""
    kind = type(layer).__name__

    def bias(module) -> list:
        return [(module.bias, unchanged, unchanged)] if module.bias is not None else []

    if kind in ("DepthwiseConv2D", "SeparableConv2D"):
        multiplier = layer.config["depth_multiplier"]

        def keras_depthwise(kernel: np.ndarray) -> np.ndarray:  # depthwise_kernel's inverse
            return kernel.reshape(-1, multiplier, *kernel.shape[2:]).transpose(2, 3, 0, 1)

        depthwise = [(layer.conv.weight, depthwise_kernel, keras_depthwise)]
        if kind == "DepthwiseConv2D":
            return depthwise + bias(layer.conv)
        return depthwise + [(layer.pointwise.weight, conv_kernel, keras_conv_kernel)] + bias(layer.pointwise)
    if kind == "Conv2D":
        return [(layer.conv.weight, conv_kernel, keras_conv_kernel)] + bias(layer.conv)
    if kind == "Dense":
        return [(layer.linear.weight, np.transpose, np.transpose)] + bias(layer.linear)
    if kind == "BatchNormalization":
        return [(tensor, unchanged, unchanged) for tensor in (layer.weight, layer.bias, layer.running_mean,
                                                             layer.running_var) if tensor is not None]
    return []


def load_keras_weights(model: Sequential, weights: dict[str, list[np.ndarray]], path: Path) -> None:
    for name, layer in model.layers.items():
        variables, values = keras_variables(layer), weights.get(name, [])
        what = f"{path}: layer {name!r} ({type(layer).__name__})"
        if len(values) != len(variables):
            raise SmallvisionError(f"{what}: the file holds {len(values)} weight arrays, the config needs "
                                   f"{len(variables)}")
        for (target, to_torch, _), value in zip(variables, values):
            place(target, to_torch(value), what)


def input_layer(shape: tuple[int, int, int]) -> Input:
    channels, height, width = shape
    return Input(shape=(height, width, channels))


# --- a run directory from a Keras file


def source_class_names(source: str | Path) -> list[str]:
    """The classes of a labelled source, without decoding it: an image folder's class folders, or an IDX
    directory's classes.txt (else its label numbers)."""
    from smallvision.data.folders import scan_folder
    from smallvision.data.sources import is_photo_folder, open_source

    if is_photo_folder(source):
        return scan_folder(Path(source)).class_names
    return open_source(source, for_training=False).class_names


def keras_network(path: Path) -> tuple[KerasModel, Sequential]:
    """A Keras file's network built and its weights loaded; one line naming the file for anything wrong."""
    keras = read_keras_file(path)

    def build(layers: list[Layer]) -> Sequential:
        try:
            return build_network(layers, keras.input_shape, name=path.stem)
        except SmallvisionError as err:  # the layers do not fit together: the file's config says so
            raise SmallvisionError(f"{path}: {err}") from None

    # Shapes first, on the meta device (no memory), as a run's model.json is read: a config cannot ask for more
    # than the file's weights hold (a damaged one asked for a billion filters). Building spends the layers.
    with torch.device("meta"):
        load_keras_weights(build(copy.deepcopy(keras.layers)), keras.weights, path)
    model = build(keras.layers)
    load_keras_weights(model, keras.weights, path)
    return keras, model


def import_keras(path: str | Path, out: str | Path | None = None, class_names: list[str] | None = None,
                 source: str | Path | None = None, rescale: float | None = None, force: bool = False):
    """A Keras file as a run directory (model.safetensors, model.json, recipe.toml, metrics.json), which
    predict, evaluate, explain, activations, filters, report and compare then use as any run."""
    from smallvision.models.layer_text import layers_source, layers_to_json
    from smallvision.recipe import Recipe
    from smallvision.run import Run, prepare_run_dir, save_run
    from smallvision.data.sources import source_spec
    from smallvision.runmeta import Architecture, ImportedFrom, Preprocessing, RunMeta

    path = Path(path)
    keras, model = keras_network(path)
    units = model.output_shape[0] if model.output_shape and len(model.output_shape) == 1 else None
    if units is None:
        raise SmallvisionError(f"{path}: the network ends in a map, not a Dense layer: nothing to classify with")
    classes = 2 if units == 1 and model.output_activation == "sigmoid" else units
    if class_names is None and source is not None:
        class_names = source_class_names(source)
    class_names = class_names or [str(i) for i in range(classes)]
    if len(class_names) != classes:
        raise SmallvisionError(f"{path}: the network has {classes} classes, but {len(class_names)} class names were "
                               f"given ({', '.join(class_names[:10])})")
    model.eval()
    if model.has_rescaling:
        if rescale not in (None, 1.0):
            raise SmallvisionError(f"{path}: the network scales its pixels itself (Rescaling); leave --rescale out")
        rescale = 1.0
    elif rescale is None:
        rescale = 1 / 255  # the book's: pixels / 255 before the network
    directory = prepare_run_dir(out, f"keras-{path.stem}", force)
    channels = keras.input_shape[0]
    layers = [input_layer(keras.input_shape)] + model.keras_layers
    recipe = Recipe(name=f"keras-{path.stem}", description=f"imported from {path.name} ({keras.written_by})").replace(
        layers=layers_source(layers), rescale=rescale, precision="fp32",
        image_size=keras.input_shape[1] if keras.input_shape[1] == keras.input_shape[2] else None,
        color_mode="grayscale" if channels == 1 else "rgb")
    meta = RunMeta(
        source=f"keras:{path.name}",
        architecture=Architecture(model=model.model_name, input_shape=keras.input_shape, num_classes=classes,
                                  layers=layers_to_json(model.keras_layers)),
        class_names=class_names,
        output_activation=model.output_activation,
        precision="fp32",  # Keras computed in float32; so do we, to give its answers
        precision_reason="imported from Keras, which computes in float32",
        preprocessing=Preprocessing(rescale=rescale, mean=None, std=None, channels_last=True,
                                    resize="area when shrinking, bilinear when growing",
                                    color_mode="L" if channels == 1 else "RGB", invert_light_background=False),
        imported_from=ImportedFrom(file=str(path.resolve()), written_by=keras.written_by, left_out=keras.left_out,
                                   source=None if source is None else source_spec(source)),  # what `evaluate RUN` scores on by default
    )
    metrics = {"imported_from": str(path.resolve()), "written_by": keras.written_by}
    save_run(directory, model, recipe, meta, [], metrics)  # no history: it was trained elsewhere
    return Run(directory, "auto")


# --- Keras files out


def keras_config(model: Sequential, rescaling: dict | None) -> dict:
    """Keras 3's config.json for a run's network, its preprocessing first as a Rescaling layer."""
    channels, height, width = model.input_shape
    entries = [{"module": "keras.layers", "class_name": "InputLayer", "registered_name": None,
                "config": {"batch_shape": [None, height, width, channels], "dtype": "float32", "sparse": False,
                           "name": "input_layer"}}]
    shape = [None, height, width, channels]

    def entry(kind: str, name: str, config: dict, input_shape: list) -> dict:
        return {"module": "keras.layers", "class_name": kind, "registered_name": None,
                "config": {"name": name, "trainable": True, "dtype": "float32", **config},
                "build_config": {"input_shape": input_shape}}

    if rescaling:
        entries.append(entry("Rescaling", "preprocessing", rescaling, shape))
    for name, layer in model.layers.items():
        kind = type(layer).__name__
        if kind not in KERAS_ARGUMENTS:
            raise SmallvisionError(f"layer {name} ({kind}) is ours, not Keras': a network with it cannot be "
                                   f"written as a Keras file")
        config = {key: list(value) if isinstance(value, tuple) else value for key, value in layer.config.items()}
        if "padding" in config and kind == "ZeroPadding2D":
            config["padding"] = [list(pair) for pair in layer.config["padding"]]
        if "activation" in config:
            config["activation"] = config["activation"] or "linear"
        if kind in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D", "MaxPooling2D", "AveragePooling2D",
                    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D", "Flatten", "SpatialDropout2D"):
            config["data_format"] = "channels_last"
        entries.append(entry(kind, name, config, shape))
        built = layer.built_shape
        shape = [None, *built[1:], built[0]] if len(built) == 3 else [None, *built]
    return {"module": "keras", "class_name": "Sequential", "registered_name": None,
            "config": {"name": model.model_name, "trainable": True, "dtype": "float32", "layers": entries},
            "build_config": {"input_shape": [None, height, width, channels]}}


def keras_weights(model: Sequential) -> dict[str, list[np.ndarray]]:
    """Each layer's weights in Keras' layout and order."""
    return {name: [np.ascontiguousarray(to_keras(tensor.detach().float().cpu().numpy()))
                   for tensor, _, to_keras in keras_variables(layer)]
            for name, layer in model.layers.items()}


def export_keras(run, out: str | Path) -> Path:
    """The run's network as a Keras 3 `.keras` archive that `keras.models.load_model` reads: it takes the
    images as Keras users feed them (0-255 pixels, height x width x channels), the run's preprocessing
    being its first layer, and gives the probabilities the run gives (test-time flipping aside)."""
    import h5py

    from smallvision.files import write_atomically

    model = run.model
    if not isinstance(model, Sequential):
        raise SmallvisionError(f"{run.path}: a pretrained timm backbone ({run.meta.architecture.backbone}) "
                               f"is not a Keras network; only layer lists can be written as Keras files")
    pre = run.meta.preprocessing
    scale, offset = pre.rescale, 0.0
    if pre.mean is not None:  # (x * rescale - mean) / std as one Rescaling
        mean, std = np.asarray(pre.mean, dtype=float), np.asarray(pre.std, dtype=float)
        scale, offset = (scale / std).tolist(), (-mean / std).tolist()
    rescaling = None if (scale == 1.0 and offset == 0.0) else {"scale": scale, "offset": offset}
    config = keras_config(model, rescaling)
    weights = keras_weights(model)
    temperature = getattr(model, "temperature", 1.0)
    if temperature != 1.0:  # calibration's temperature, folded into the last Dense: (xW + b) / T = x(W/T) + b/T
        last = list(weights)[-1]
        if type(model.layers[last]).__name__ != "Dense":
            raise SmallvisionError(f"{run.path}: the run divides its logits by a temperature ({temperature:g}) and its "
                                   f"last layer is not a Dense one to fold it into; a Keras file would not give the "
                                   f"run's probabilities")
        weights[last] = [value / temperature for value in weights[last]]
    buffer = io.BytesIO()
    kinds = (["Rescaling"] if rescaling else []) + [type(layer).__name__ for layer in model.layers.values()]
    stored = ([[]] if rescaling else []) + list(weights.values())
    with h5py.File(buffer, "w") as store:
        for where, values in zip(keras3_paths(kinds), stored):
            group = store.create_group(f"layers/{where}/vars")
            for index, value in enumerate(values):
                group.create_dataset(str(index), data=value.astype(np.float32))
        store.create_group("vars")
    metadata = {"keras_version": "3.15.1", "date_saved": "", "exported_by": "smallvision"}
    out = Path(out)

    def write(temporary: Path) -> None:
        with zipfile.ZipFile(temporary, "w") as archive:
            archive.writestr("metadata.json", json.dumps(metadata))
            archive.writestr("config.json", json.dumps(config))
            archive.writestr("model.weights.h5", buffer.getvalue())

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, write)
    return out
