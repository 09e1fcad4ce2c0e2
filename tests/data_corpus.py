"""A DATA_DIR holding one of every bad case the validate stage must survive, and the verdict each one gets.

Shared by test_manifest.py (the facts in each row) and test_validate.py (which expectation fails).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from replearn.config import Config

# Small thresholds so the corpus stays tiny: K=2 images per class, bomb guard at 10,000 px.
CONFIG = Config.model_validate(
    {
        "validate": {"max_pixels": 10_000, "workers": 1},
        "train": {"classes_per_batch": 2, "images_per_class": 2},
    }
)
NON_UTF8_NAME = b"caf\xe9.png"
LONG_NAME = "x" * 240 + ".png"

# path (as the manifest shows it) -> the checks it fails; every other file passes every check.
EXPECTED_FAILURES = {
    "alpha/zero.jpg": {"decodes"},
    "alpha/truncated.jpg": {"decodes"},
    "alpha/truncated.png": {"decodes"},
    "alpha/text.jpg": {"decodes"},
    "alpha/tiny.png": {"min_width", "min_height"},
    "alpha/big.png": {"max_pixels"},
    "alpha/portable.ppm": {"format"},
    "alpha/good_0.png": {"no_leakage"},
    "delta/copy.png": {"no_leakage"},
    "beta/caf\\xe9.png": {"utf8_names"},
    "gamma/outside.png": {"readable"},
    "gamma/loop.png": {"readable"},
    "gamma/broken.png": {"readable"},
    "gamma/back": {"readable"},
    "stray.png": {"in_class_folder"},
}
EXPECTED_ERRORS = {
    "alpha/zero.jpg": "empty file (0 bytes)",
    "alpha/truncated.jpg": "OSError: image file is truncated",
    "alpha/truncated.png": "OSError: image file is truncated",
    "alpha/text.jpg": "not an image Pillow can read",
    "alpha/big.png": "not decoded: 200x100 = 20,000 pixels exceeds validate.max_pixels (10,000)",
    "gamma/outside.png": "symlink points outside DATA_DIR: ",
    "gamma/loop.png": "symlink loop",
    "gamma/broken.png": "broken symlink: missing.png does not exist",
    "gamma/back": "symlink loop: points to a folder that contains it",
}
# Odd but valid files: they pass, with these facts.
EXPECTED_FACTS = {
    "beta/cmyk.jpg": {"format": "JPEG", "mode": "CMYK"},
    "beta/gray16.png": {"format": "PNG", "mode": "I;16"},
    "beta/gray16.tif": {"format": "TIFF", "mode": "I;16"},
    "beta/palette.png": {"format": "PNG", "mode": "P"},
    "beta/alpha.png": {"format": "PNG", "mode": "LA"},
    "beta/animated.gif": {"format": "GIF", "frames": 3},
    "beta/rotated.jpg": {"format": "JPEG", "width": 20, "height": 40},
    f"beta/{LONG_NAME}": {"format": "PNG"},
    "gamma/inside.png": {"format": "PNG"},
}
EXPECTED_CLASS_FAILURES = {
    "delta": {"min_images"},
    "empty": {"min_images"},
    "epsilon": {"unique_class_names"},
    "EPSILON": {"unique_class_names"},
}
HIDDEN = 3  # alpha/.DS_Store, beta/Thumbs.db, .cache/


def noise(seed: int, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> Image.Image:
    """Distinct random content per seed, so no two corpus images share a sha256 by accident."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def build_corpus(root: Path) -> Path:
    """Write the corpus under root/raw (and one file outside it for the escaping symlink); return DATA_DIR."""
    data = root / "raw"
    for folder in ("alpha", "beta", "gamma", "delta", "empty", "epsilon", "EPSILON", ".cache"):
        (data / folder).mkdir(parents=True)
    seed = iter(range(1000))
    for name in ("alpha", "gamma", "epsilon", "EPSILON"):
        for index in range(3 if name in ("alpha", "gamma") else 2):
            noise(next(seed)).save(data / name / f"good_{index}.png")
    jpeg, png = encode(noise(next(seed), (64, 64)), "JPEG"), encode(noise(next(seed), (64, 64)), "PNG")
    (data / "alpha/zero.jpg").write_bytes(b"")
    (data / "alpha/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (data / "alpha/truncated.png").write_bytes(png[: len(png) // 2])
    (data / "alpha/text.jpg").write_text("this is not a picture\n")
    noise(next(seed), (1, 1)).save(data / "alpha/tiny.png")
    noise(next(seed), (200, 100)).save(data / "alpha/big.png")
    noise(next(seed)).save(data / "alpha/portable.ppm")
    (data / "alpha/.DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (data / "delta/copy.png").write_bytes((data / "alpha/good_0.png").read_bytes())

    beta = data / "beta"
    noise(next(seed), mode="CMYK").save(beta / "cmyk.jpg")
    gray16 = np.random.default_rng(next(seed)).integers(0, 65536, (16, 16), dtype=np.uint16)
    Image.fromarray(gray16).save(beta / "gray16.png")
    Image.fromarray(gray16[::-1].copy()).save(beta / "gray16.tif")
    noise(next(seed)).convert("P").save(beta / "palette.png")
    noise(next(seed), mode="LA").save(beta / "alpha.png")
    frames = [noise(next(seed)).convert("P") for _ in range(3)]
    frames[0].save(beta / "animated.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 40x20, shown 20x40
    noise(next(seed), (40, 20)).save(beta / "rotated.jpg", exif=exif)
    noise(next(seed)).save(beta / LONG_NAME)
    with open(os.fsencode(beta) + b"/" + NON_UTF8_NAME, "wb") as handle:
        handle.write(encode(noise(next(seed)), "PNG"))
    (beta / "Thumbs.db").write_bytes(b"thumbnails")

    gamma = data / "gamma"
    outside = root / "outside.png"
    noise(next(seed)).save(outside)
    (gamma / "inside.png").symlink_to("good_0.png")
    (gamma / "outside.png").symlink_to(outside)
    (gamma / "loop.png").symlink_to("loop.png")
    (gamma / "broken.png").symlink_to("missing.png")
    (gamma / "back").symlink_to("..")
    noise(next(seed)).save(data / ".cache/thumb.png")
    noise(next(seed)).save(data / "stray.png")
    return data


def snapshot(root: Path) -> dict[bytes, tuple[int, int, int, str]]:
    """Every entry under root without following links: mode, size, mtime and content hash or link target."""
    state = {}
    for folder, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path).hex()
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    content = hashlib.sha256(handle.read()).hexdigest()
            else:
                content = ""
            state[path] = (info.st_mode, info.st_size, info.st_mtime_ns, content)
    return state
