"""Image files -> uint8 tensors shaped as a run's input, for predict (any size, mode or format)."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from smallvision.errors import SmallvisionError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def expand_image_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given, and the image files inside any directory given, in sorted order."""
    found = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise SmallvisionError(f"{path}: no such file or directory")
    if not found:
        raise SmallvisionError(f"no image files found in {', '.join(map(str, paths))}")
    return found


def load_image(path: Path, channels: int, height: int, width: int, invert_light_background: bool = False) -> torch.Tensor:
    """One image as uint8 [channels, height, width]; EXIF orientation applied, resized with area averaging.

    With `invert_light_background` (a model trained on light marks on black, like MNIST), dark ink on
    light paper is inverted and the marks are framed as MNIST frames its digits.
    """
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise SmallvisionError(f"{path}: cannot read as an image ({err})") from None
    if invert_light_background and channels == 1:
        pixels = np.asarray(image, dtype=np.uint8)
        if border_mean(pixels) > 127:
            pixels = 255 - pixels
        pixels = frame_like_mnist(pixels, height, width)
    else:
        pixels = resized_pixels(image, width, height)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def resized_pixels(image: Image.Image, width: int, height: int) -> np.ndarray:
    """uint8 pixels at (width, height): area averaging when shrinking, bilinear when growing."""
    if image.size != (width, height):
        shrinking = image.width > width or image.height > height
        image = image.resize((width, height), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def frame_like_mnist(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """MNIST's own normalisation: the marks' bounding box scaled to fit 20/28 of the frame, keeping
    their aspect, then centred by their centre of mass. A digit drawn small in a corner of a large
    canvas then looks to the model like the digits it learned from."""
    ink = pixels > max(32, int(pixels.max()) // 4)
    if not ink.any():
        return resized_pixels(Image.fromarray(pixels), width, height)
    rows, cols = np.nonzero(ink)
    crop = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = min(height, width) * 20 / 28 / max(crop.shape)
    fitted = resized_pixels(Image.fromarray(crop), max(1, round(crop.shape[1] * scale)),
                            max(1, round(crop.shape[0] * scale))).astype(np.float64)
    mass = fitted.sum() or 1.0
    centre_row = (fitted.sum(axis=1) * np.arange(fitted.shape[0])).sum() / mass
    centre_col = (fitted.sum(axis=0) * np.arange(fitted.shape[1])).sum() / mass
    top = int(np.clip(round(height / 2 - centre_row), 0, height - fitted.shape[0]))
    left = int(np.clip(round(width / 2 - centre_col), 0, width - fitted.shape[1]))
    framed = np.zeros((height, width), dtype=np.uint8)
    framed[top:top + fitted.shape[0], left:left + fitted.shape[1]] = np.clip(fitted, 0, 255).astype(np.uint8)
    return framed


def border_mean(pixels: np.ndarray) -> float:
    edges = [pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]
    return float(np.mean([edge.mean() for edge in edges]))


def has_dark_background(images: torch.Tensor) -> bool:
    """Whether a split's images (uint8 [N, C, H, W]) are mostly dark at the border, as MNIST's are."""
    sample = images[: min(len(images), 1000)].float()
    border = torch.cat([sample[..., 0, :], sample[..., -1, :], sample[..., :, 0], sample[..., :, -1]], dim=-1)
    return bool(border.mean() < 64)
