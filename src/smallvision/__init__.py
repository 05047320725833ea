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

from smallvision.data import DataSource, ImageSet, open_source
from smallvision.errors import SmallvisionError
from smallvision.models import create_model, layers, summary
from smallvision.models.layers import Sequential
from smallvision.recipe import Recipe, builtin_recipes, load_recipe
from smallvision.run import Run, load_run
from smallvision.workflow import resume, train

__version__ = "0.1.0"
__all__ = ["DataSource", "ImageSet", "Recipe", "Run", "Sequential", "SmallvisionError", "builtin_recipes", "create_model", "layers",
           "load_recipe", "load_run", "open_source", "resume", "summary", "train"]
