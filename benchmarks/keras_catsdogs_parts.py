"""Where Keras' time goes in the seed's augmented cats-vs-dogs program (run in the Keras environment).

Times, separately, for one pass of 2,000 training images in batches of 32:
  - the legacy ImageDataGenerator alone (read, decode, resize, augment: what feeds each batch),
  - the network alone, trained on batches already in memory.
Prints one line: RESULT keras_parts generator_img_per_s=... network_img_per_s=...

Usage: keras_catsdogs_parts.py DATA_DIR
"""
import sys
import time

import numpy as np
from keras import layers, models, optimizers
from keras.src.legacy.preprocessing.image import ImageDataGenerator

data = sys.argv[1]
batch, batches = 32, 63

generator = ImageDataGenerator(rescale=1.0 / 255, rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                               shear_range=0.2, zoom_range=0.2, horizontal_flip=True)
flow = generator.flow_from_directory(f"{data}/train", target_size=(150, 150), batch_size=batch, class_mode="binary")
start = time.perf_counter()
made = sum(len(flow[i % len(flow)][0]) for i in range(batches))
generator_rate = made / (time.perf_counter() - start)

model = models.Sequential([layers.Input(shape=(150, 150, 3))])
for filters in (32, 64, 128, 128):
    model.add(layers.Conv2D(filters, (3, 3), activation="relu"))
    model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Flatten())
model.add(layers.Dropout(0.5))
model.add(layers.Dense(512, activation="relu"))
model.add(layers.Dense(1, activation="sigmoid"))
model.compile(loss="binary_crossentropy", optimizer=optimizers.RMSprop(learning_rate=1e-4), metrics=["acc"])
x = np.random.rand(batch, 150, 150, 3).astype("float32")
y = np.random.randint(0, 2, (batch, 1)).astype("float32")
for _ in range(3):
    model.train_on_batch(x, y)  # build and trace before timing
start = time.perf_counter()
for _ in range(batches):
    model.train_on_batch(x, y)
network_rate = batch * batches / (time.perf_counter() - start)
print(f"RESULT keras_parts generator_img_per_s={generator_rate:.1f} network_img_per_s={network_rate:.1f}")
