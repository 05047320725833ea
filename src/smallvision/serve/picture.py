"""The Grad-CAM picture `serve` answers: the uploaded image under its heatmap, as a PNG.

The picture has the upload's own proportions (at most DISPLAY_SIDE pixels a side, at least MIN_SIDE), so
that a page can swap it with the photo in place. The model saw the whole image squeezed to its input size,
so the heatmap is stretched back over the whole image. A digit re-framed as MNIST's (a model trained on
light marks on black) is drawn as the model saw it instead: the framing moved the marks.
"""

import io

import numpy as np
from PIL import Image

from smallvision.images import open_image

DISPLAY_SIDE = 512
MIN_SIDE = 256  # a 28x28 input is drawn bigger, or there is nothing to see


def display_image(content: bytes, model_input: np.ndarray, framed: bool) -> Image.Image:
    if framed:
        pixels = model_input.transpose(1, 2, 0)  # [C, H, W] as the network took it
        image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
    else:
        image, _ = open_image(content, 3, at_least=DISPLAY_SIDE)
        image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.BOX)
    if max(image.size) < MIN_SIDE:
        scale = MIN_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    return image


def gradcam_png(content: bytes, model_input: np.ndarray, heatmap: np.ndarray, framed: bool) -> bytes:
    """PNG bytes: the image (`content`, or `model_input` when `framed`) under `heatmap` [H, W] in [0, 1]."""
    from smallvision.plots import heatmap_overlay  # matplotlib: imported on the first Grad-CAM, not at start

    image = display_image(content, model_input, framed)
    # Pillow, not PyTorch, stretches it: this runs in a request's thread, not the model's (see served_run.py)
    heat = Image.fromarray(heatmap.astype(np.float32), "F")
    stretched = np.asarray(heat.resize(image.size, Image.Resampling.BILINEAR))
    pixels = heatmap_overlay(np.asarray(image), stretched)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=3)  # speed over the last bytes
    return buffer.getvalue()
