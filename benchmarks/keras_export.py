"""Benchmark: runs written as Keras 3 files (`export --format keras`), loaded by real Keras.

Trains three short runs (the weights and batch-norm statistics must not be their initial values):
the seed's mnist_convnet, the seed's catsdogs_convnet with Dropout, and a layer list with batch
norm, a stride-2 'same' convolution on an even size (Keras pads only after) and a separable
convolution. Each is exported; then, in the Keras environment (benchmarks/keras-env),
`keras.models.load_model` reads it and predicts the same test images, and the largest absolute
difference from the run's own fp32 probabilities is printed beside the bar (1e-4).

    .venv/bin/python benchmarks/keras_export.py
"""

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import smallvision as sv
from keras_baseline import ROOT, keras_python, save_results
from smallvision.keras_files import export_keras

BAR = 1e-4
DATA = ROOT.parent / "shared" / "datasets"
MIXED = ("Conv2D(16, 3, strides=2, padding='same', use_bias=False) BatchNormalization() Activation('relu') "
         "SeparableConv2D(32, 3, padding='same', activation='relu') MaxPooling2D(2) "
         "DepthwiseConv2D(3, padding='same') LeakyReLU() GlobalAveragePooling2D() Dense(10, activation='softmax')")
KERAS_SIDE = """
import json, sys
import numpy as np
import keras
results = {}
for name, path in json.loads(sys.argv[1]).items():
    data = np.load(path + ".npz")
    model = keras.models.load_model(path)
    predicted = model.predict(data["images"].astype("float32"), verbose=0)
    results[name] = float(np.abs(predicted - data["probabilities"]).max())
print("RESULT " + json.dumps(results))
"""


def runs(scratch: Path) -> dict:
    quick = dict(epochs=1, progress=False, seed=0)
    return {
        "mnist_convnet": sv.train("mnist", "seed-mnist", out=scratch / "mnist", steps_per_epoch=100,
                                  data=DATA / "mnist", **quick),
        "catsdogs_convnet + Dropout": sv.train(DATA / "cats_and_dogs_small", "seed-catsdogs-augment",
                                               out=scratch / "catsdogs", steps_per_epoch=10, **quick),
        "batch norm, stride-2 same, separable": sv.train("mnist", "seed-mnist", out=scratch / "mixed", layers=MIXED,
                                                         steps_per_epoch=100, data=DATA / "mnist", **quick),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    python = keras_python()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        exported = {}
        for name, run in runs(scratch).items():
            run.precision = "fp32"  # Keras computes in float32; compare like with like
            test = run.labelled_split(split="test", data_dir=DATA / "mnist")
            images = test.images[:64]
            path = export_keras(run, scratch / f"{run.path.name}.keras")
            np.savez(f"{path}.npz", images=images.permute(0, 2, 3, 1).numpy(),
                     probabilities=probabilities_as_keras(run, images))
            exported[name] = str(path)
        done = subprocess.run([python, "-c", KERAS_SIDE, json.dumps(exported)], capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        results = json.loads(done.stdout.split("RESULT ", 1)[1])
    print(f"{'network':<40} {'max |p - Keras p|':>18} {'bar':>7}")
    for name, difference in results.items():
        print(f"{name:<40} {difference:>18.2e} {BAR:>7.0e}  {'ok' if difference <= BAR else 'OVER THE BAR'}")
    save_results("keras_export", results)


def probabilities_as_keras(run, images) -> np.ndarray:
    """The run's probabilities in Keras' shape: one column for a single sigmoid unit."""
    probabilities = run.probabilities(images).numpy()
    return probabilities[:, 1:] if run.model.output_activation == "sigmoid" else probabilities


if __name__ == "__main__":
    main()
