"""The single decode-and-resize function that preprocessing, training, evaluation and the ONNX embedder share.

It needs only Pillow and numpy, so the torch-free inference path can use it too. The model
receives float32 RGB in [0, 1], NCHW; mean/std normalisation happens inside the model, so
this is all any runtime has to reproduce.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from replearn.config import ResizeConfig

WHITE = (255, 255, 255)
# What Pillow raises for a file it cannot decode (truncated, corrupt, not an image, decompression bomb).
# Callers that skip bad files and report them catch exactly these.
DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white, 16-bit and float are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit modes always span 0..65535, so a dark scan stays dark. "I" and "F" carry no range:
        # values above 255 are taken as 16-bit, others as 8-bit values stored wide.
        high = values.max() if values.size else 0.0
        scale = 255.0 / 65535.0 if image.mode.startswith("I;16") or high > 255 else 1.0
        return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, WHITE + (255,))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def resize_image(image: Image.Image, resize: ResizeConfig) -> Image.Image:
    """Bring an RGB image to resize.size x resize.size by resize.mode (crop, pad or stretch)."""
    side = resize.size
    if resize.mode == "stretch":
        return image.resize((side, side), Image.Resampling.BICUBIC)
    if resize.mode == "crop":
        return ImageOps.fit(image, (side, side), method=Image.Resampling.BICUBIC)
    return ImageOps.pad(image, (side, side), method=Image.Resampling.BICUBIC, color=WHITE)


def load_image(path: Path | str | IO[bytes], resize: ResizeConfig) -> Image.Image:
    """Decode fully (first frame of an animation), apply EXIF orientation, convert to RGB and resize.

    JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the output
    size on both sides: several times faster for photos, and every runtime calls this same
    function, so training and inference see identical pixels.
    """
    with Image.open(path) as image:
        image.seek(0)
        image.draft("RGB", (resize.size, resize.size))
        image.load()
        oriented = ImageOps.exif_transpose(image)
        return resize_image(to_rgb(oriented), resize)


def image_to_array(image: Image.Image) -> np.ndarray:
    """RGB image to float32 CHW in [0, 1]: the model's input for one image."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
