"""Writes tests/data/keras/: Keras models built with the functional API (as the book's second edition
builds them), saved by real Keras, with Keras' own predictions beside them, so that tests of
`import-keras` need no TensorFlow. Run with the Keras environment's python (benchmarks/keras-env;
add `pip install tf-keras==2.21.0` there for the .h5 file):

    $(bash benchmarks/keras-env) benchmarks/make_keras_functional_files.py

Files: functional_augment.keras (Keras 3) and functional_augment.h5 (tf-keras, Keras 2's API): an Input,
a nested Sequential of augmentation layers (RandomFlip, RandomRotation, RandomZoom: they act only in
training), Rescaling, two convolutions, pooling, Dropout and a 3-way softmax, one after another;
functional_branches.keras: a residual connection (an Add of two branches), which a layer list cannot hold.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "keras"
SHAPE = (48, 48, 3)


def build(keras, branches: bool = False):
    layers = keras.layers
    inputs = keras.Input(shape=SHAPE)
    augment = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1),
                                layers.RandomZoom(0.2)], name="data_augmentation")
    x = augment(inputs)
    x = layers.Rescaling(1.0 / 255)(x)
    x = layers.Conv2D(8, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    y = layers.Conv2D(16, 3, activation="relu", padding="same")(x)
    if branches:
        y = layers.Add()([y, layers.Conv2D(16, 1)(x)])
    x = layers.GlobalAveragePooling2D()(y)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def train_briefly(model, rng):
    images = rng.integers(0, 256, (96, *SHAPE)).astype("float32")
    labels = (images[:, :, :, 0].mean((1, 2)) // 86).astype("int64")  # a learnable rule: the red level
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=2, batch_size=16, verbose=0)


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "keras3"
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, *SHAPE)).astype("uint8")
    if which == "keras3":
        import keras
        keras.utils.set_random_seed(0)
        files = {"functional_augment.keras": build(keras), "functional_branches.keras": build(keras, True)}
        written_by = f"Keras {keras.__version__}"
    else:  # Keras 2's API, as tf-keras keeps it
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tf_keras as keras
        keras.utils.set_random_seed(0)
        files = {"functional_augment.h5": build(keras)}
        written_by = f"tf-keras {keras.__version__}"
    predictions = dict(np.load(OUT / "predictions.npz")) if (OUT / "predictions.npz").exists() else {}
    index = json.loads((OUT / "files.json").read_text()) if (OUT / "files.json").exists() else {}
    for name, model in files.items():
        train_briefly(model, rng)
        model.save(str(OUT / name))
        predictions[f"{name}/images"] = images
        predictions[f"{name}/probabilities"] = model.predict(images.astype("float32"), verbose=0)
        index[name] = {"written_by": written_by, "classes": ["0", "1", "2"], "input_scale": 1.0}
    np.savez_compressed(OUT / "predictions.npz", **predictions)
    (OUT / "files.json").write_text(json.dumps(index, indent=2) + "\n")
    print("wrote", ", ".join(files), "to", OUT)


if __name__ == "__main__":
    main()
