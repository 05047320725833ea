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
    """One image as uint8 [channels, height, width]; EXIF orientation applied, resized with area averaging."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise SmallvisionError(f"{path}: cannot read as an image ({err})") from None
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BOX if image.width > width else Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    if invert_light_background and border_mean(pixels) > 127:
        pixels = 255 - pixels  # dark ink on white paper, for a model trained on light ink on black
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def border_mean(pixels: np.ndarray) -> float:
    edges = [pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]
    return float(np.mean([edge.mean() for edge in edges]))


def has_dark_background(images: torch.Tensor) -> bool:
    """Whether a split's images (uint8 [N, C, H, W]) are mostly dark at the border, as MNIST's are."""
    sample = images[: min(len(images), 1000)].float()
    border = torch.cat([sample[..., 0, :], sample[..., -1, :], sample[..., :, 0], sample[..., :, -1]], dim=-1)
    return bool(border.mean() < 64)
