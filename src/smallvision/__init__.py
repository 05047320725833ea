"""smallvision: convolutional image classifiers for small image sets, in Keras' words, on PyTorch.

    import smallvision as sv
    run = sv.train("mnist", recipe="seed-mnist")
    run = sv.load_run("runs/mnist-seed-mnist-...")
    run.predict(["digit.png"]);  run.evaluate("mnist")
"""

from smallvision.data import DataSource, ImageSet, open_source
from smallvision.errors import SmallvisionError
from smallvision.models import create_model, summary
from smallvision.recipe import Recipe, builtin_recipes, load_recipe
from smallvision.run import Run, load_run
from smallvision.workflow import train

__version__ = "0.1.0"
__all__ = ["DataSource", "ImageSet", "Recipe", "Run", "SmallvisionError", "builtin_recipes", "create_model",
           "load_recipe", "load_run", "open_source", "summary", "train"]
