"""An exported `.onnx` file served (`export --format onnx`): predictions by onnxruntime, without PyTorch.

The graph takes uint8 images [N, H, W, C] and gives the run's probabilities, its preprocessing inside, so an
upload is decoded as `predict MODEL.onnx` reads a file and handed over as it is. Grad-CAM needs the network's
layers and their gradients, which an exported graph does not offer: serve the run directory for heatmaps.
"""

import numpy as np

from smallvision.images import pixels_from_bytes
from smallvision.onnx_model import OnnxModel
from smallvision.serve.cards import export_card
from smallvision.serve.models import ServedModel


class ServedOnnx(ServedModel):
    # One image a pass unless told otherwise: onnxruntime runs EfficientNet-Lite0 at 224x224 slower per image in
    # batches on this CPU (4.9 ms at 1, 5.9 ms at 8, 7.1 ms at 32), and its memory arena keeps the largest
    # batch's room for good (a server at rest: 134 MB batching 1, 880 MB batching up to 32). A network as small
    # as MNIST's gains from batches, but its 0.03 ms an image is not what a request waits for.
    default_max_batch = 1

    def __init__(self, name: str, model: OnnxModel, max_batch: int | None = None, max_wait: float = 0.005,
                 max_queue: int = 256):
        self.name, self.model, self.class_names = name, model, list(model.class_names)
        self.channels, self.height, self.width = model.input_shape
        self.invert = bool(model.preprocessing.get("invert_light_background", False))
        self.map_layers, self.default_layer = [], None
        self.no_gradcam = (f"model {name!r} is an exported ONNX file, whose layers Grad-CAM cannot look inside; "
                           f"serve its run directory for heatmaps")
        self.unknown_threshold = model.unknown_threshold
        self.card = export_card(model, name)
        self.start_batcher(max_batch, max_wait, max_queue)

    @property
    def decoded_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)  # the graph's own layout: no transpose on the way

    def decode(self, content: bytes) -> np.ndarray:
        """uint8 [H, W, C]."""
        return pixels_from_bytes(content, self.channels, self.height, self.width, self.invert)

    def forward(self, images: np.ndarray) -> np.ndarray:
        probabilities, scores = self.model.probabilities_and_unknown(images)
        return probabilities if scores is None else np.concatenate([probabilities, scores[:, None]], axis=1)
