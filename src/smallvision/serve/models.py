"""The face every served model shows the application and the batcher (`ServedModel`), whichever engine runs
it: a run directory, run by PyTorch with Grad-CAM (`served_run.py`), or an exported `.onnx` file, run by
onnxruntime without PyTorch (`served_onnx.py`). Both build on this module, which imports neither (nor
PyTorch); `loading.py` loads them.

A batch runs at one of a few sizes (`buckets`: powers of two, one and a half times them, and max_batch),
padded with copies of its last image. Each new input shape leaves buffers of its own in the process for good
(oneDNN's and the allocator's, or onnxruntime's): batches of every size from 1 to 32 grew a server by
200-300 MB, where a few sizes, each run once as the worker starts, keep it flat. The padding costs compute
only for a request of several images that falls between two sizes (the batcher trims the rest).

Images cross the batcher as NumPy arrays (uint8 [N, ...] in the model's own layout) and results come back as
NumPy too: the request threads and the event loop never touch PyTorch.
"""

import numpy as np

from smallvision.predictions import answer
from smallvision.serve.batcher import Batcher, Job

PREDICT = ("predict",)  # a batch key; Grad-CAM's is ("gradcam", layer): one layer a batch


def buckets(max_batch: int) -> list[int]:
    """The sizes a batch runs at: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and one and a half times
    them) below max_batch, and max_batch. Close enough that the batcher rarely pads (it takes the largest
    size the waiting images fill and leaves the rest for the next batch), few enough to warm each once."""
    sizes = {size for power in range(max_batch.bit_length()) for size in (1 << power, 3 << power >> 1)}
    return sorted(size for size in sizes if 1 <= size < max_batch) + [max_batch]


def padded(images: np.ndarray, size: int) -> np.ndarray:
    """`images` [N, ...] made `size` long with copies of the last one (N itself when it is already as long)."""
    if len(images) >= size:
        return images
    return np.concatenate([images, np.repeat(images[-1:], size - len(images), axis=0)])


class ServedModel:
    """What the application and the batcher use of a served model, whichever engine runs it. A subclass sets
    the fields in its __init__, then calls `start_batcher`, and gives `decode`, `forward` and, for Grad-CAM,
    `run_gradcam`."""

    name: str
    card: dict
    class_names: list[str]
    channels: int
    height: int
    width: int
    invert: bool  # digits on a light background inverted and re-framed as MNIST's, as the run read them
    map_layers: list[str]  # the layers Grad-CAM can explain; none where it cannot look inside
    default_layer: str | None
    no_gradcam: str  # why there is no Grad-CAM, when default_layer is None
    # "none of these": the run's threshold where it has an unknown scorer; `forward` then gives each image's
    # unknown score as one more column after the classes' probabilities, so a batch stays one array
    unknown_threshold: float | None = None

    default_max_batch: int  # the most images a pass, unless the server was told (--max-batch)

    def start_batcher(self, max_batch: int | None, max_wait: float, max_queue: int) -> None:
        max_batch = max_batch or self.default_max_batch
        self.sizes = buckets(max_batch)
        self.batcher = Batcher(self.name, self.run_batch, max_batch, max_wait, max_queue, self.warm_up, self.sizes)

    @property
    def framed(self) -> bool:
        """Whether the model sees a digit re-framed as MNIST's (so Grad-CAM is drawn on what it saw)."""
        return self.invert and self.channels == 1

    def decode(self, content: bytes) -> np.ndarray:
        """An upload as uint8 pixels in the model's input layout, as `predict` reads a file; DamagedImage if
        unusable. Runs in the decoding threads."""
        raise NotImplementedError

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, classes] for a batch of decoded images (and the unknown score as a last column,
        where the model has a scorer). Runs in the worker thread."""
        raise NotImplementedError

    def run_gradcam(self, images: np.ndarray, classes: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray, str]:
        """(heatmaps [N, H, W] in [0, 1], the classes explained, the layer used). Runs in the worker thread."""
        raise NotImplementedError

    def bucket(self, count: int) -> int:
        return next(size for size in self.sizes if size >= count)

    def warm_up(self) -> None:
        """One forward pass at each batch size, in the worker before its first batch."""
        for size in self.sizes:
            self.forward(np.zeros((size, *self.decoded_shape), dtype=np.uint8))

    @property
    def decoded_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def prediction(self, path: str, row: np.ndarray, top: int) -> dict:
        """`predict`'s answer for one image from its row of `forward`."""
        if self.unknown_threshold is None:
            return answer(path, self.class_names, row, top)
        return answer(path, self.class_names, row[:-1], top, (float(row[-1]), self.unknown_threshold))

    def class_probabilities(self, rows: np.ndarray) -> np.ndarray:
        """[N, classes] from `forward`'s rows (the unknown score's column left out)."""
        return rows if self.unknown_threshold is None else rows[:, :-1]

    def run_batch(self, key: tuple, jobs: list[Job], images: np.ndarray) -> list:
        """Runs in the worker thread. Predict: each job's probabilities [n, classes]. Grad-CAM: each job's
        (probabilities [n, classes], heatmaps [n, H, W], explained classes [n], layer). A request of more
        images than the largest size runs in passes of that size: no shape the warm-up did not meet."""
        count, largest = len(images), self.sizes[-1]
        passes = []
        for start in range(0, count, largest):
            piece = images[start:start + largest]
            passes.append(self.forward(padded(piece, self.bucket(len(piece))))[:len(piece)])
        probabilities = np.concatenate(passes)
        sizes = np.cumsum([len(job.images) for job in jobs])[:-1]
        if key == PREDICT:
            return np.split(probabilities, sizes)
        classes = self.class_probabilities(probabilities).argmax(1)
        start = 0
        for job in jobs:
            if job.extra is not None:  # a class asked for by name
                classes[start:start + len(job.images)] = job.extra
            start += len(job.images)
        size = self.bucket(count)  # Grad-CAM's jobs are one image each: the batcher keeps them within max_batch
        heatmaps, classes, layer = self.run_gradcam(padded(images, size), padded(classes, size), key[1])
        return [(p, h, c, layer) for p, h, c in zip(np.split(probabilities, sizes), np.split(heatmaps[:count], sizes),
                                                    np.split(classes[:count], sizes))]
