"""smallvision: convolutional image classifiers for small image sets, in Keras' words, on PyTorch.

    import smallvision as sv
    run = sv.train("mnist", recipe="seed-mnist")
    net = sv.Sequential([sv.layers.Conv2D(32, (3, 3), activation="relu"), sv.layers.MaxPooling2D((2, 2)),
                         sv.layers.Flatten(), sv.layers.Dense(10, activation="softmax")])
    run = sv.train("mnist", model=net)
    run = sv.resume("runs/mnist-1")      # after a Ctrl-C, a kill or a crash: where it stopped
    run = sv.load_run("runs/mnist-seed-mnist-...")
    run.predict(["digit.png"]);  run.evaluate("mnist")
"""

import importlib

__version__ = "0.1.0"
__all__ = ["audit", "calibrate", "Callback", "DataSource", "Loop", "ImageSet", "Recipe", "Run", "Sequential", "SmallvisionError", "builtin_recipes", "create_model", "layers",
           "load_recipe", "load_run", "open_source", "resume", "summary", "train"]

# Each public name is imported from its module when first asked for (PEP 562), not here: importing any
# submodule runs this file first, and `predict MODEL.onnx` (onnxruntime alone) must not load PyTorch.
_HOMES = {"audit": "smallvision.audit", "calibrate": "smallvision.recalibrate", "Callback": "smallvision.callbacks", "Loop": "smallvision.loop", "DataSource": "smallvision.data", "ImageSet": "smallvision.data", "open_source": "smallvision.data",
          "SmallvisionError": "smallvision.errors", "create_model": "smallvision.models", "layers": "smallvision.models",
          "summary": "smallvision.models", "Sequential": "smallvision.models.layers", "Recipe": "smallvision.recipe",
          "builtin_recipes": "smallvision.recipe", "load_recipe": "smallvision.recipe", "Run": "smallvision.run",
          "load_run": "smallvision.run", "resume": "smallvision.workflow", "train": "smallvision.workflow"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'smallvision' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
