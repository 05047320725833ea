"""A run directory served: its network in PyTorch, predictions and Grad-CAM.

PyTorch's parallel work (OpenMP) happens in each model's worker thread alone: runs are loaded in a thread of
their own that then ends (`loading.in_passing_thread`), and decoding stays in NumPy. GNU OpenMP keeps a team
of threads for every thread that ever ran parallel work, and once they outnumber the cores it stops spinning
between parallel regions: a photo's forward pass in the worker then took 34-43 ms instead of 21
(EfficientNet-Lite0, 2 cores).
"""

import numpy as np
import torch

from smallvision.errors import SmallvisionError
from smallvision.explain import run_heatmaps
from smallvision.images import pixels_from_bytes
from smallvision.run import Run
from smallvision.serve.cards import model_card
from smallvision.serve.models import ServedModel
from smallvision.taps import default_cam_layer, map_shapes


class ServedRun(ServedModel):
    # PyTorch on the CPU gains from batches: EfficientNet-Lite0 at 224x224, 17.9 ms for one photo, 57.6 ms for 8
    default_max_batch = 32

    def __init__(self, name: str, run: Run, max_batch: int | None = None, max_wait: float = 0.005, max_queue: int = 256):
        self.name, self.run, self.class_names = name, run, list(run.class_names)
        self.channels, self.height, self.width = run.meta.architecture.input_shape
        self.invert = run.meta.preprocessing.invert_light_background
        # Found once, before the worker owns the model: checking a layer later needs no forward pass.
        self.map_layers = list(map_shapes(run.model))
        try:
            self.default_layer: str | None = default_cam_layer(run.model)
        except SmallvisionError:  # a network of Dense layers alone: served, but nothing for Grad-CAM to show
            self.default_layer = None
        self.no_gradcam = f"model {name!r} has no convolutional layer to explain"
        self.unknown_threshold = run.unknown.threshold if run.unknown is not None else None
        self.card = model_card(run, name) | {"gradcam_layer": self.default_layer, "gradcam_layers": self.map_layers}
        self.start_batcher(max_batch, max_wait, max_queue)

    def decode(self, content: bytes) -> np.ndarray:
        """uint8 [C, H, W]. NumPy, not PyTorch: this runs in the decoding threads (see the module's note)."""
        pixels = pixels_from_bytes(content, self.channels, self.height, self.width, self.invert)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def forward(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            probabilities, scores = self.run.probabilities_and_unknown(torch.from_numpy(images))
        if scores is None:
            return probabilities.cpu().numpy()
        return torch.cat([probabilities.cpu(), scores.cpu()[:, None]], 1).numpy()

    def run_gradcam(self, images: np.ndarray, classes: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray, str]:
        heatmaps, classes, layer = run_heatmaps(self.run, torch.from_numpy(images), torch.from_numpy(classes), layer)
        return heatmaps.cpu().numpy(), classes.cpu().numpy(), layer
