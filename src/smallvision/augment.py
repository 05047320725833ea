"""ImageDataGenerator's augmentation, with its parameters' names and meaning, batched on the device.

Each image gets fresh random parameters, as Keras draws them: a rotation in degrees, shifts (a
fraction of the size, or pixels when 1 or more), a shear in degrees, independent x and y zooms,
flips, a brightness factor. They are composed into one affine map per image, exactly as Keras'
legacy `apply_affine_transform` composes them (rotation, shift, shear, zoom, in (x, y) pixel
coordinates about the image centre; flips after), and the whole batch is resampled in one
bilinear pass, with the border that comes into view filled as `fill_mode` says.

One difference, on purpose: Keras 3's legacy code swaps its axes after building the map, so its
`height_shift_range` moves images sideways and `width_shift_range` up and down. We keep the
documented meaning (width: sideways). With equal ranges, as in the seed, the two draw the same
transforms. A map sends an output pixel to the input point it samples.

The settings are the recipe's own group, `recipe.augment` (recipe.py's `Augment`, no PyTorch there);
the functions here do the tensor work with them.
"""

import torch
import torch.nn.functional as F

from smallvision.recipe import Augment


def random_parameters(augment: Augment, count: int, height: int, width: int, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Fresh parameters for `count` images, drawn as Keras draws them (uniform in each range)."""
    def uniform(low, high):
        return low + (high - low) * torch.rand(count, generator=generator, device=device)

    def shift(spread: float, size: int):
        pixels = spread * size if spread < 1 else spread  # Keras: below 1 is a fraction of the size
        return uniform(-pixels, pixels)

    zoom_low, zoom_high = augment.zoom_bounds
    return {
        "theta": uniform(-augment.rotation_range, augment.rotation_range),
        "shift_x": shift(augment.width_shift_range, width),     # sideways, in pixels
        "shift_y": shift(augment.height_shift_range, height),   # up and down, in pixels
        "shear": uniform(-augment.shear_range, augment.shear_range),
        "zx": uniform(zoom_low, zoom_high),
        "zy": uniform(zoom_low, zoom_high),
        "flip_horizontal": torch.rand(count, generator=generator, device=device) < (0.5 if augment.horizontal_flip else 0),
        "flip_vertical": torch.rand(count, generator=generator, device=device) < (0.5 if augment.vertical_flip else 0),
        "brightness": uniform(*augment.brightness_range) if augment.brightness_range else torch.ones(count, device=device),
    }


def augment_batch(augment: Augment, images: torch.Tensor, generator: torch.Generator | None = None,
                  share: tuple[int, int] | None = None) -> torch.Tensor:
    """Augmented float images [B, C, H, W] (0-255 scale) from uint8 or float images. With `share`
    (start, whole), `images` are the images start, start + 1, ... of a batch of `whole`, and the random
    draws are made for the whole batch: each of several processes then transforms its share exactly
    as one process transforms the batch."""
    count, _, height, width = images.shape
    start, whole = share or (0, count)
    parameters = random_parameters(augment, whole, height, width, generator, images.device)
    if whole != count:
        parameters = {name: value[start:start + count] for name, value in parameters.items()}
    return apply_parameters(augment, images, parameters, augment.moves_pixels)


def apply_parameters(augment: Augment, images: torch.Tensor, parameters: dict[str, torch.Tensor],
                     moves: bool | None = None) -> torch.Tensor:
    """`images` transformed with the given parameters: one resampling pass (skipped when `moves` is
    False, or, when it is not given, when every map is the identity), then brightness."""
    pixels = images.float()
    _, _, height, width = pixels.shape
    matrices = sampling_matrices(parameters, height, width)
    if moves is None:
        moves = not torch.allclose(matrices, torch.eye(3, device=matrices.device).expand_as(matrices))
    if moves:
        pixels = resample(pixels, matrices, augment.fill_mode, augment.cval)
    if augment.brightness_range:
        # PIL's ImageEnhance.Brightness, as Keras uses it: a blend with black, kept in 0-255
        pixels = (pixels * parameters["brightness"].view(-1, 1, 1, 1)).clamp_(0, 255)
    return pixels


def sampling_matrices(p: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
    """[B, 3, 3] maps from an output pixel (x, y, 1) (x along a row, y down the columns) to the
    input point it samples: Keras' rotation @ shift @ shear @ zoom about the centre, flips first."""
    count = len(p["theta"])
    device = p["theta"].device

    def matrix(rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    zero, one = torch.zeros(count, device=device), torch.ones(count, device=device)
    theta, shear = torch.deg2rad(p["theta"]), torch.deg2rad(p["shear"])
    rotation = matrix([[theta.cos(), -theta.sin(), zero], [theta.sin(), theta.cos(), zero], [zero, zero, one]])
    shift = matrix([[one, zero, p["shift_x"]], [zero, one, p["shift_y"]], [zero, zero, one]])
    shearing = matrix([[one, -shear.sin(), zero], [zero, shear.cos(), zero], [zero, zero, one]])
    zoom = matrix([[p["zx"], zero, zero], [zero, p["zy"], zero], [zero, zero, one]])
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    to_centre = torch.tensor([[1, 0, -centre_x], [0, 1, -centre_y], [0, 0, 1]], device=device, dtype=torch.float32)
    from_centre = torch.tensor([[1, 0, centre_x], [0, 1, centre_y], [0, 0, 1]], device=device, dtype=torch.float32)
    # Flips come after the transform in Keras, so in the output-to-input map they act first.
    x_sign = torch.where(p["flip_horizontal"], -one, one)
    y_sign = torch.where(p["flip_vertical"], -one, one)
    flips = matrix([[x_sign, zero, zero], [zero, y_sign, zero], [zero, zero, one]])
    return from_centre @ rotation @ shift @ shearing @ zoom @ flips @ to_centre


def resample(pixels: torch.Tensor, matrices: torch.Tensor, fill_mode: str, cval: float) -> torch.Tensor:
    """Bilinear sampling of each image at its map's points; outside points filled as `fill_mode` says."""
    count, _, height, width = pixels.shape
    device = pixels.device
    xs = torch.arange(width, device=device, dtype=torch.float32)
    ys = torch.arange(height, device=device, dtype=torch.float32)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x.flatten(), grid_y.flatten(), torch.ones(height * width, device=device)])
    source = matrices[:, :2, :] @ points  # [B, 2, H*W]: (x, y) to sample
    source_x, source_y = source[:, 0], source[:, 1]
    if fill_mode == "wrap":
        # periodic (abcd|abcd|abcd), as Keras documents it; scipy's "wrap", under Keras, repeats with
        # period n - 1 instead. The half-pixel seam at the edge blends with the border.
        source_x = torch.remainder(source_x + 0.5, width) - 0.5
        source_y = torch.remainder(source_y + 0.5, height) - 0.5
    # grid_sample's coordinates with align_corners=False: -1 and 1 are the outer edges of the edge pixels
    grid = torch.stack([(2 * source_x + 1) / width - 1, (2 * source_y + 1) / height - 1], dim=-1)
    grid = grid.view(count, height, width, 2)
    padding = "reflection" if fill_mode == "reflect" else "border"  # nearest (and wrap, already folded): edge pixels
    sampled = F.grid_sample(pixels, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    if fill_mode == "constant":
        # as scipy's "constant", which Keras uses: cval wherever the point falls outside the pixel centres
        outside = (source_x < 0) | (source_x > width - 1) | (source_y < 0) | (source_y > height - 1)
        sampled = sampled.masked_fill(outside.view(count, 1, height, width), cval)
    return sampled


def fixed_parameters(count: int, **overrides) -> dict[str, torch.Tensor]:
    """Fixed parameters (no change but what is given), for previews and checks of the geometry."""
    values = {"theta": 0.0, "shift_x": 0.0, "shift_y": 0.0, "shear": 0.0, "zx": 1.0, "zy": 1.0, "brightness": 1.0}
    values.update(overrides)
    parameters = {k: torch.full((count,), float(v)) for k, v in values.items() if k not in ("flip_horizontal", "flip_vertical")}
    for flip in ("flip_horizontal", "flip_vertical"):
        parameters[flip] = torch.full((count,), bool(overrides.get(flip, False)))
    return parameters

