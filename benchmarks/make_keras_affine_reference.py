"""Write tests/data/keras_affine_reference.npz: Keras' own legacy apply_affine_transform on a fixed
image, for each fill mode, so a test can hold smallvision's augmentation to it without TensorFlow.

Run in the Keras environment:  $(benchmarks/keras-env) benchmarks/make_keras_affine_reference.py
"""
from pathlib import Path

import numpy as np
from keras.src.legacy.preprocessing.image import apply_affine_transform

PARAMETERS = {"theta": 30.0, "tx": 3.0, "ty": -2.0, "shear": 10.0, "zx": 1.1, "zy": 0.9}
rng = np.random.default_rng(0)
image = (rng.random((24, 24, 3)) * 255).astype("float32")
outputs = {mode: apply_affine_transform(image, **PARAMETERS, row_axis=0, col_axis=1, channel_axis=2,
                                        fill_mode=mode, cval=50.0, order=1)
           for mode in ("nearest", "reflect", "wrap", "constant")}
target = Path(__file__).resolve().parents[1] / "tests" / "data" / "keras_affine_reference.npz"
np.savez_compressed(target, image=image, parameters=np.array([PARAMETERS[k] for k in PARAMETERS]), **outputs)
print(target)
