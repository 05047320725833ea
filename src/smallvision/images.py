"""Image files -> uint8 pixels at a model's input size: any format Pillow reads, any mode.

PyTorch is imported only by the two functions that hand back or take tensors: `predict MODEL.onnx`
reads its images with `read_pixels` and never loads PyTorch.
"""

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from smallvision.errors import SmallvisionError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DamagedImage(Exception):
    """A file that cannot be used as an image; the message is the reason, for the skipped-files list."""


def expand_image_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given, and the image files inside any directory given, in sorted order."""
    found = []
    for path, missing in image_files_listed(paths):
        if missing:
            raise SmallvisionError(missing)
        found.append(path)
    return found


def image_files_listed(paths: list[str | Path]) -> list[tuple[Path, str | None]]:
    """`expand_image_paths`, with a path that does not exist kept in its place with its error (the one line
    that names it) rather than stopping there: `predict` and `explain` answer the others."""
    found = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += [(p, None) for p in sorted(p for p in path.rglob("*")
                                                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())]
        elif path.is_file():
            found.append((path, None))
        else:
            found.append((path, f"{path}: no such file or directory"))
    if not found:
        raise SmallvisionError(f"no image files found in {', '.join(map(str, paths))}")
    return found


def open_image(content: bytes, channels: int, at_least: int | None = None) -> tuple[Image.Image, dict]:
    """Decode file bytes into an upright L or RGB image, and what the file was (format, mode, size).

    With `at_least`, a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's own scaling,
    several times faster for camera photos) while both sides stay at least that many pixels.
    Raises DamagedImage with the reason for empty, truncated, non-image and over-large files.
    """
    if not content:
        raise DamagedImage("empty file (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as opened:
                info = {"format": opened.format, "mode": opened.mode, "width": opened.width, "height": opened.height}
                if limit and opened.width * opened.height > limit:
                    raise DamagedImage(f"refused: {opened.width}x{opened.height} pixels is over the limit of "
                                       f"{limit:,} (a decompression bomb?)")
                if at_least:
                    opened.draft(opened.mode, (at_least, at_least))
                opened.load()  # decode now, so a truncated file fails here and not later
                image = ImageOps.exif_transpose(opened)
                image = to_mode(image, "L" if channels == 1 else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DamagedImage(f"refused: decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise DamagedImage("not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DamagedImage(f"damaged image ({err})") from None
    return image, info


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` as L or RGB; 16- and 32-bit greys are scaled to 8 bits, not clipped as Pillow's convert does."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and values.max() <= 65535 else max(float(values.max()), 1.0)
        if image.mode == "F" and values.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return image if image.mode == mode else image.convert(mode)


def decode_image(content: bytes, channels: int, height: int, width: int) -> tuple[np.ndarray, dict]:
    """File bytes -> uint8 pixels [height, width, channels] and what the file was; DamagedImage if unusable."""
    # Twice the target size keeps the final area-averaged resize as sharp as from the full image.
    image, info = open_image(content, channels, at_least=2 * max(height, width))
    pixels = resized_pixels(image, width, height)
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels), info


def load_image(path: Path, channels: int, height: int, width: int,
               invert_light_background: bool = False) -> "torch.Tensor":
    """One image file as uint8 [channels, height, width]: `read_pixels`, as a tensor."""
    import torch

    pixels = read_pixels(path, channels, height, width, invert_light_background)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def read_pixels(path: Path, channels: int, height: int, width: int, invert_light_background: bool = False) -> np.ndarray:
    """One image file as uint8 [height, width, channels] (a writable copy); EXIF orientation applied, resized.

    With `invert_light_background` (a model trained on light marks on black, like MNIST), dark ink on
    light paper is inverted and the marks are framed as MNIST frames its digits.
    """
    try:
        return pixels_from_bytes(Path(path).read_bytes(), channels, height, width, invert_light_background)
    except DamagedImage as err:
        raise SmallvisionError(f"{path}: cannot use as an image: {err}") from None
    except OSError as err:
        raise SmallvisionError(f"{path}: cannot read ({err.strerror or err})") from None


def pixels_from_bytes(content: bytes, channels: int, height: int, width: int,
                      invert_light_background: bool = False) -> np.ndarray:
    """`read_pixels` for a file's bytes already in memory (an upload to `serve`); DamagedImage if unusable."""
    framed = invert_light_background and channels == 1  # framing needs the marks at full resolution
    image, _ = open_image(content, channels, at_least=None if framed else 2 * max(height, width))
    if framed:
        pixels = np.asarray(image, dtype=np.uint8)
        if border_mean(pixels) > 127:
            pixels = 255 - pixels
        pixels = frame_like_mnist(pixels, height, width)
    else:
        pixels = resized_pixels(image, width, height)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return pixels.copy()


def resized_pixels(image: Image.Image, width: int, height: int) -> np.ndarray:
    """uint8 pixels at (width, height): area averaging when shrinking, bilinear when growing."""
    if image.size != (width, height):
        shrinking = image.width > width or image.height > height
        image = image.resize((width, height), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    return np.array(image, dtype=np.uint8)  # a writable copy, which torch.from_numpy wants


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


def has_dark_background(images: "torch.Tensor") -> bool:
    """Whether a split's images (uint8 [N, C, H, W]) are mostly dark at the border, as MNIST's are."""
    import torch

    sample = images[: min(len(images), 1000)].float()
    border = torch.cat([sample[..., 0, :], sample[..., -1, :], sample[..., :, 0], sample[..., :, -1]], dim=-1)
    return bool(border.mean() < 64)
