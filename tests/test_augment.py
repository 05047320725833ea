"""Augmentation's geometry on synthetic images, with ImageDataGenerator's meaning of each parameter."""

from pathlib import Path

import numpy as np
import pytest
import torch

from smallvision.augment import apply_parameters, augment_batch, fixed_parameters, random_parameters
from smallvision.recipe import Augment, Recipe


def marker(height=16, width=16, row=3, col=10):
    image = torch.zeros(1, 1, height, width)
    image[0, 0, row, col] = 255
    return image


def where(image) -> list[list[int]]:
    return (image[0, 0] > 127).nonzero().tolist()


def test_a_90_degree_rotation_is_exact():
    image = torch.rand(1, 3, 9, 9) * 255
    turned = apply_parameters(Augment(), image, fixed_parameters(1, theta=90))
    assert torch.allclose(turned, torch.rot90(image, k=1, dims=(2, 3)), atol=1e-3)  # counter-clockwise, as Keras


def test_a_quarter_width_shift_moves_a_marker_a_quarter_width():
    shifted = apply_parameters(Augment(), marker(), fixed_parameters(1, shift_x=0.25 * 16))
    assert where(shifted) == [[3, 10 - 4]]
    down = apply_parameters(Augment(), marker(), fixed_parameters(1, shift_y=-4.0))
    assert where(down) == [[3 + 4, 10]]


def test_shift_ranges_are_fractions_below_one_and_pixels_above():
    draws = random_parameters(Augment(width_shift_range=0.25), 2000, 16, 40, torch.Generator().manual_seed(0))
    assert 9.0 < draws["shift_x"].abs().max() <= 10.0  # 0.25 of 40 pixels
    draws = random_parameters(Augment(height_shift_range=3), 2000, 16, 40, torch.Generator().manual_seed(0))
    assert 2.9 < draws["shift_y"].abs().max() <= 3.0


def test_flips_mirror_the_image():
    image = marker()
    assert where(apply_parameters(Augment(), image, fixed_parameters(1, flip_horizontal=True))) == [[3, 15 - 10]]
    assert where(apply_parameters(Augment(), image, fixed_parameters(1, flip_vertical=True))) == [[15 - 3, 10]]


def test_zoom_above_one_shrinks_the_content_as_keras_does():
    image = torch.zeros(1, 1, 21, 21)
    image[0, 0, 5:16, 5:16] = 255  # an 11-pixel square in the middle
    zoomed = apply_parameters(Augment(), image, fixed_parameters(1, zx=2.0, zy=2.0))
    assert 4 <= (zoomed[0, 0, 10] > 127).sum() <= 7  # about half as wide


@pytest.mark.parametrize("fill_mode, expected", [
    ("nearest", [30, 40, 50, 60, 70, 70, 70, 70]),
    ("reflect", [30, 40, 50, 60, 70, 70, 60, 50]),
    ("wrap", [30, 40, 50, 60, 70, 0, 10, 20]),
    ("constant", [30, 40, 50, 60, 70, 99, 99, 99]),
])
def test_each_fill_mode_fills_the_uncovered_edge(fill_mode, expected):
    ramp = (torch.arange(8.0) * 10).expand(1, 1, 8, 8)
    shifted = apply_parameters(Augment(fill_mode=fill_mode, cval=99), ramp, fixed_parameters(1, shift_x=3.0))
    assert shifted[0, 0, 4].tolist() == pytest.approx(expected, abs=1e-3)


def test_brightness_scales_and_clips():
    image = torch.full((1, 3, 4, 4), 200.0)
    brighter = apply_parameters(Augment(brightness_range=(1.5, 1.5)), image, fixed_parameters(1, brightness=1.5))
    darker = apply_parameters(Augment(brightness_range=(0.5, 0.5)), image, fixed_parameters(1, brightness=0.5))
    assert brighter.max() == 255 and darker.mean() == 100


def test_every_image_gets_its_own_parameters_and_a_seed_repeats_them():
    recipe = Recipe().replace(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2,
                              zoom_range=0.2, horizontal_flip=True)
    augment = recipe.augment
    assert augment.zoom_bounds == (0.8, 1.2)
    images = torch.rand(1, 3, 20, 20).mul(255).expand(6, -1, -1, -1).to(torch.uint8)
    first = augment_batch(augment, images, torch.Generator().manual_seed(1))
    assert first.dtype == torch.float32 and first.shape == (6, 3, 20, 20)
    assert all(not torch.equal(first[0], first[i]) for i in range(1, 6))
    assert torch.equal(first, augment_batch(augment, images, torch.Generator().manual_seed(1)))


def test_a_recipe_without_augmentation_has_none():
    assert not Recipe().augment.active
    assert not Recipe().replace(zoom_range=[1.0, 1.0]).augment.active
    assert Recipe().replace(vertical_flip=True).augment.active


def test_the_geometry_is_keras_own():
    """Keras' legacy apply_affine_transform on a fixed image (made by benchmarks/make_keras_affine_reference.py)."""
    reference = np.load(Path(__file__).parent / "data" / "keras_affine_reference.npz", allow_pickle=False)
    image = torch.from_numpy(reference["image"]).permute(2, 0, 1)[None]
    theta, tx, ty, shear, zx, zy = reference["parameters"].tolist()
    # Keras' tx, drawn from height_shift_range, moves sideways in its code: our shift_x (see augment.py)
    parameters = fixed_parameters(1, theta=theta, shift_x=tx, shift_y=ty, shear=shear, zx=zx, zy=zy)
    inside = None
    for mode in ("nearest", "reflect", "constant", "wrap"):
        ours = apply_parameters(Augment(fill_mode=mode, cval=50.0), image, parameters)[0].permute(1, 2, 0).numpy()
        difference = np.abs(ours - reference[mode])
        if mode == "constant":
            inside = reference["constant"] != 50.0  # where the map lands on the image itself
        if mode == "wrap":  # scipy's wrap repeats with period n - 1; ours with n, as documented: compare inside
            difference = difference[inside]
        assert difference.max() < 0.01, mode
