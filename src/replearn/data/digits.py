"""The digits demo dataset: scikit-learn's bundled 1,797 handwritten 8x8 scans as PNG class folders.

Real scans that ship inside an installed package, so tests and demos need no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from replearn.atomic import atomic_directory
from replearn.console import track


def generate_digits(out_dir: Path, size: int, force: bool = False) -> dict[str, int]:
    """Write OUT/digit_<d>/digits_<index>.png, upscaled to `size` pixels; returns images per class."""
    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).astype(np.uint8)
    counts: dict[str, int] = {}
    with atomic_directory(out_dir, replace=force) as staging:
        for index in track(range(len(images)), len(images), "writing digits"):
            label = f"digit_{int(bunch.target[index])}"
            folder = staging / label
            folder.mkdir(exist_ok=True)
            image = Image.fromarray(images[index], mode="L").resize((size, size), Image.Resampling.BICUBIC)
            image.save(folder / f"digits_{index:04d}.png")
            counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))
