"""The models a server serves: each run loaded once, under a name of its own, with its card and the worker
that runs its batches (predictions and Grad-CAM).

A batch runs at one of a few sizes (`buckets`: powers of two, one and a half times them, and max_batch),
padded with copies of its last image. Each new input shape leaves buffers of its own in the process for good
(oneDNN's and the allocator's): batches of every size from 1 to 32 grew a server by 200-300 MB, where a few
sizes, each run once as the worker starts, keep it flat. The padding costs compute only for a request of
several images that falls between two sizes (the batcher trims the rest).

PyTorch's parallel work (OpenMP) happens in each model's worker thread alone: runs are loaded in a thread of
their own that then ends, and decoding stays in NumPy. GNU OpenMP keeps a team of threads for every thread
that ever ran parallel work, and once they outnumber the cores it stops spinning between parallel regions:
a photo's forward pass in the worker then took 34-43 ms instead of 21 (EfficientNet-Lite0, 2 cores).
"""

import threading

from pathlib import Path

import numpy as np
import torch

from smallvision.errors import SmallvisionError
from smallvision.explain import run_heatmaps
from smallvision.images import pixels_from_bytes
from smallvision.run import Run
from smallvision.serve.batcher import Batcher, Job
from smallvision.serve.cards import model_card
from smallvision.taps import default_cam_layer, map_shapes

PREDICT = ("predict",)  # a batch key; Grad-CAM's is ("gradcam", layer): one layer a batch


def buckets(max_batch: int) -> list[int]:
    """The sizes a batch runs at: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and one and a half times
    them) below max_batch, and max_batch. Close enough that the batcher rarely pads (it takes the largest
    size the waiting images fill and leaves the rest for the next batch), few enough to warm each once."""
    sizes = {size for power in range(max_batch.bit_length()) for size in (1 << power, 3 << power >> 1)}
    return sorted(size for size in sizes if 1 <= size < max_batch) + [max_batch]


def padded(images: torch.Tensor, size: int) -> torch.Tensor:
    """`images` [N, ...] made `size` long with copies of the last one (N itself when it is already as long)."""
    if len(images) >= size:
        return images
    return torch.cat([images, images[-1:].expand(size - len(images), *images.shape[1:])])


def served_names(paths: list[Path]) -> list[str]:
    """Each run by its directory's name; a name met again gets -2, -3, ... in the order given."""
    names: list[str] = []
    for path in paths:
        base = Path(path).resolve().name or "run"
        name, number = base, 1
        while name in names:
            number += 1
            name = f"{base}-{number}"
        names.append(name)
    return names


class ServedModel:
    def __init__(self, name: str, run: Run, max_batch: int = 32, max_wait: float = 0.005, max_queue: int = 256):
        self.name, self.run = name, run
        self.channels, self.height, self.width = run.meta["architecture"]["input_shape"]
        self.invert = bool(run.meta["preprocessing"].get("invert_light_background", False))
        # Found once, before the worker owns the model: checking a layer later needs no forward pass.
        self.map_layers = list(map_shapes(run.model))
        try:
            self.default_layer: str | None = default_cam_layer(run.model)
        except SmallvisionError:  # a network of Dense layers alone: served, but nothing for Grad-CAM to show
            self.default_layer = None
        self.card = model_card(run, name) | {"gradcam_layer": self.default_layer, "gradcam_layers": self.map_layers}
        self.sizes = buckets(max_batch)
        self.batcher = Batcher(name, self.run_batch, max_batch, max_wait, max_queue, self.warm_up, self.sizes)

    @property
    def framed(self) -> bool:
        """Whether the model sees a digit re-framed as MNIST's (so Grad-CAM is drawn on what it saw)."""
        return self.invert and self.channels == 1

    def decode(self, content: bytes) -> np.ndarray:
        """An upload as uint8 [C, H, W] at the model's input, as `predict` reads a file; DamagedImage if unusable.
        NumPy, not PyTorch: this runs in the decoding threads (see the module's note)."""
        pixels = pixels_from_bytes(content, self.channels, self.height, self.width, self.invert)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def bucket(self, count: int) -> int:
        return next((size for size in self.sizes if size >= count), count)  # past max_batch: as it is

    def warm_up(self) -> None:
        """One forward pass at each batch size, in the worker before its first batch."""
        with torch.no_grad():
            for size in self.sizes:
                self.run.probabilities(torch.zeros(size, self.channels, self.height, self.width, dtype=torch.uint8))

    def run_batch(self, key: tuple, jobs: list[Job], images: torch.Tensor) -> list:
        """Runs in the worker thread. Predict: each job's probabilities [n, classes]. Grad-CAM: each job's
        (probabilities [n, classes], heatmaps [n, H, W], explained classes [n], layer)."""
        count = len(images)
        images = padded(images, self.bucket(count))
        with torch.no_grad():
            probabilities = self.run.probabilities(images)
        sizes = [len(job.images) for job in jobs]
        if key == PREDICT:
            return list(probabilities[:count].split(sizes))
        classes = probabilities.argmax(1)
        start = 0
        for job, size in zip(jobs, sizes):
            if job.extra is not None:  # a class asked for by name
                classes[start:start + size] = job.extra
            start += size
        heatmaps, classes, layer = run_heatmaps(self.run, images, classes, key[1])
        return [(p, h, c, layer) for p, h, c in zip(probabilities[:count].split(sizes), heatmaps[:count].split(sizes),
                                                    classes[:count].split(sizes))]


def load_models(runs: list, device: str = "auto", max_batch: int = 32, max_wait: float = 0.005,
                max_queue: int = 256) -> dict[str, ServedModel]:
    """{name: ServedModel} for run directories (or Runs already loaded), in the order given. A path that is
    not a usable run raises SmallvisionError, before anything is served."""
    def load() -> dict[str, ServedModel]:
        loaded = [run if isinstance(run, Run) else Run(run, device) for run in runs]
        names = served_names([run.path for run in loaded])
        return {name: ServedModel(name, run, max_batch, max_wait, max_queue) for name, run in zip(names, loaded)}

    return in_passing_thread(load)


def in_passing_thread(work):
    """work() in a thread that ends with it, so that the OpenMP team it starts ends too (see the module's note);
    its result, or its exception raised here."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as err:  # noqa: BLE001 -- handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="smallvision-serve-load")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
