"""The single decode-and-resize function: orientation, modes, resize modes, determinism."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from replearn.config import ResizeConfig
from replearn.data.images import DECODE_ERRORS, image_to_array, load_image, resize_image, to_rgb

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def close(value: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return bool(np.abs(value - np.array(colour)).max() <= tolerance)


def two_tone(width: int = 30, height: int = 10) -> Image.Image:
    """Left third red, the rest blue: orientation and cropping are visible in the result."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 3, height))
    return image


def save_with_orientation(image: Image.Image, path: Path, orientation: int, **options: object) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **options)
    return path


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_exif_orientation_is_applied(tmp_path: Path, suffix: str) -> None:
    # Orientation 6: the camera was turned, the viewer rotates 90 degrees clockwise, so left becomes top.
    path = save_with_orientation(two_tone(), tmp_path / f"turned.{suffix}", 6, quality=95)
    out = pixels(load_image(path, ResizeConfig(size=30, mode="pad")))
    assert out.shape == (30, 30, 3)
    assert close(out[2, 15], RED) and close(out[27, 15], BLUE)
    assert close(out[15, 2], WHITE) and close(out[15, 27], WHITE)  # the narrow side is padded


def test_without_orientation_the_image_stays_upright(tmp_path: Path) -> None:
    path = tmp_path / "upright.png"
    two_tone().save(path)
    out = pixels(load_image(path, ResizeConfig(size=30, mode="pad")))
    assert close(out[15, 2], RED) and close(out[15, 27], BLUE)
    assert close(out[2, 15], WHITE)


def rgba_half_transparent() -> Image.Image:
    image = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    image.paste((0, 0, 0, 0), (0, 0, 4, 8))
    return image


@pytest.mark.parametrize(
    ("image", "left", "right"),
    [
        (rgba_half_transparent(), WHITE, BLUE),
        (rgba_half_transparent().convert("LA"), WHITE, (29, 29, 29)),
        (Image.new("L", (8, 8), 100), (100, 100, 100), (100, 100, 100)),
        (Image.new("1", (8, 8), 1), WHITE, WHITE),
        (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), RED, RED),
        (Image.new("YCbCr", (8, 8), (76, 85, 255)), RED, RED),
        (Image.new("I;16", (8, 8), 65535), WHITE, WHITE),
        (Image.new("I;16", (8, 8), 200), (1, 1, 1), (1, 1, 1)),  # a dark 16-bit scan stays dark
        (Image.new("I", (8, 8), 128), (128, 128, 128), (128, 128, 128)),
        (Image.new("F", (8, 8), 64.0), (64, 64, 64), (64, 64, 64)),
    ],
    ids=["RGBA", "LA", "L", "1", "CMYK", "YCbCr", "I;16", "I;16 dark", "I", "F"],
)
def test_every_mode_becomes_rgb_with_alpha_on_white(image: Image.Image, left: tuple, right: tuple) -> None:
    out = to_rgb(image)
    assert out.mode == "RGB"
    assert close(pixels(out)[4, 1], left, tolerance=3)
    assert close(pixels(out)[4, 6], right, tolerance=3)


def test_palette_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(0, (0, 0, 4, 8))
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    out = pixels(load_image(path, ResizeConfig(size=8, mode="stretch")))
    assert close(out[4, 1], WHITE, 3) and close(out[4, 6], GREEN, 3)


def test_first_frame_of_an_animation(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert close(pixels(load_image(path, ResizeConfig(size=8, mode="stretch")))[4, 4], RED, 3)


def striped() -> Image.Image:
    """40x20, green left quarter, red elsewhere: crop removes the green, pad adds white bands."""
    image = Image.new("RGB", (40, 20), RED)
    image.paste(GREEN, (0, 0, 10, 20))
    return image


def test_resize_crop_keeps_the_centre() -> None:
    out = pixels(resize_image(striped(), ResizeConfig(size=16, mode="crop")))
    assert out.shape == (16, 16, 3)
    assert close(out[8, 0], RED) and close(out[8, 15], RED) and close(out[0, 8], RED)


def test_resize_pad_keeps_everything_on_white() -> None:
    out = pixels(resize_image(striped(), ResizeConfig(size=16, mode="pad")))
    assert out.shape == (16, 16, 3)
    assert close(out[0, 8], WHITE, 3) and close(out[15, 8], WHITE, 3)
    assert close(out[8, 0], GREEN) and close(out[8, 15], RED)


def test_resize_stretch_fills_the_square() -> None:
    out = pixels(resize_image(striped(), ResizeConfig(size=16, mode="stretch")))
    assert out.shape == (16, 16, 3)
    assert close(out[0, 0], GREEN) and close(out[15, 15], RED)
    assert not (np.abs(out - np.array(WHITE)).max(axis=2) < 10).any()


def photo(width: int = 480, height: int = 320) -> Image.Image:
    """A smooth colour gradient, like a photo background, where JPEG and rescaling behave."""
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    array = np.stack([255 * x * np.ones_like(y), 255 * y * np.ones_like(x), 128 + 0 * x * y], axis=2)
    return Image.fromarray(array.astype(np.uint8))


def test_jpeg_reduced_decoding_matches_a_full_decode(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    photo().save(path, quality=95)
    resize = ResizeConfig(size=32, mode="crop")
    fast = pixels(load_image(path, resize))
    with Image.open(path) as full:
        reference = pixels(resize_image(full.convert("RGB"), resize))
    assert fast.shape == reference.shape == (32, 32, 3)
    assert np.abs(fast - reference).mean() < 2.0


def test_decoding_is_deterministic_from_path_or_bytes(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    photo().save(path, quality=90)
    resize = ResizeConfig(size=24, mode="pad")
    first = load_image(path, resize).tobytes()
    assert load_image(path, resize).tobytes() == first
    assert load_image(io.BytesIO(path.read_bytes()), resize).tobytes() == first


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"])
def test_undecodable_files_raise_a_decode_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DECODE_ERRORS):
        load_image(path, ResizeConfig())


def test_truncated_jpeg_raises_a_decode_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    photo().save(buffer, format="JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    with pytest.raises(DECODE_ERRORS):
        load_image(path, ResizeConfig())


def test_image_to_array_is_float_chw_in_unit_range() -> None:
    array = image_to_array(resize_image(striped(), ResizeConfig(size=16, mode="pad")))
    assert array.shape == (3, 16, 16) and array.dtype == np.float32
    assert array.min() >= 0.0 and array.max() <= 1.0
