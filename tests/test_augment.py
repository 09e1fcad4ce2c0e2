"""Augmentations: every one keeps size, dtype and range, is seeded by torch's generator, and does what it says."""

from __future__ import annotations

import typing

import pytest
import torch

from replearn.config import Augmentation
from replearn.training.augment import PixelNoise, StrokeWidth, background, build_augmentation, build_transform

NAMES: tuple[str, ...] = typing.get_args(Augmentation)


def glyph(size: int = 32) -> torch.Tensor:
    """A dark 'T' with a foot to the right (2-pixel strokes, no mirror symmetry) on grey paper of 200, uint8 RGB."""
    image = torch.full((3, size, size), 200, dtype=torch.uint8)
    image[:, 6:8, 6 : size - 6] = 20
    image[:, 6 : size - 6, size // 2 - 1 : size // 2 + 1] = 20
    image[:, size - 8 : size - 6, size // 2 : size - 8] = 20
    return image


@pytest.mark.parametrize("name", NAMES)
def test_each_augmentation_keeps_size_dtype_and_range_and_is_seeded(name: Augmentation) -> None:
    image = glyph()
    transform = build_transform(name, 32)
    outputs = []
    for seed in (0, 0, *range(1, 30)):
        torch.manual_seed(seed)
        out = transform(image)
        assert out.shape == image.shape and out.dtype == torch.uint8
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])
    assert any(not torch.equal(outputs[0], other) for other in outputs[2:])

    torch.manual_seed(0)
    tensor = build_augmentation([name], 32)(image)
    assert tensor.dtype == torch.float32 and tensor.shape == image.shape
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0


def test_background_is_the_border_median() -> None:
    assert background(glyph()) == [200.0, 200.0, 200.0]


def test_geometric_augmentations_fill_with_the_background_not_white() -> None:
    torch.manual_seed(0)
    sheared = build_transform("shear", 32)(torch.full((3, 32, 32), 200, dtype=torch.uint8))
    assert set(sheared.unique().tolist()) == {200}


def first_seed(choose_bolder: bool) -> int:
    """A seed whose first draw makes StrokeWidth(p=1) pick bolder (draw < 0.5) or lighter."""
    for seed in range(100):
        torch.manual_seed(seed)
        if (float(torch.rand(())) < 0.5) == choose_bolder:
            return seed
    raise AssertionError("no seed found")


def test_stroke_width_bolder_spreads_ink_by_one_pixel_and_lighter_fades_it() -> None:
    image = glyph()
    ink = int((image[0] < 128).sum())
    torch.manual_seed(first_seed(choose_bolder=True))
    bold = StrokeWidth(p=1.0)(image)
    torch.manual_seed(first_seed(choose_bolder=False))
    light = StrokeWidth(p=1.0)(image)
    # The T's bar (rows 6-7) and stem (columns 15-16) grow by one pixel on every side.
    assert int(bold[0, 5, 10]) == 20 and int(bold[0, 4, 10]) == 200
    assert int(bold[0, 20, 14]) == 20 and int(bold[0, 20, 13]) == 200
    assert int((bold[0] < 128).sum()) > ink
    # Every ink pixel of a 2-pixel stroke touches paper, so lighter makes it (20 + 200) / 2 = 110.
    assert int(light[0, 6, 10]) == 110 and int(light[0, 20, 15]) == 110
    assert int(light[0, 4, 10]) == 200


def test_pixel_noise_changes_pixels_within_range() -> None:
    torch.manual_seed(0)
    noisy = PixelNoise(max_sigma=30.0)(torch.full((3, 16, 16), 250, dtype=torch.uint8))
    assert noisy.dtype == torch.uint8 and int(noisy.max()) <= 255
    assert 0 < float((noisy.float() - 250).abs().mean()) < 30
