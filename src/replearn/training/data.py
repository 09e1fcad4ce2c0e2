"""Fast access to a preprocessed folder: every image decoded once into one uint8 array in memory.

Preprocessed images are already at the model's size, so decoding them again every batch (and
resizing a second time) only burns the cores the model needs. A set of 100,000 images at 64 px
is 1.2 GB of uint8; a batch is then one fancy-index copy, orders of magnitude faster than the
model's forward and backward pass (see benchmarks/preprocess.py). Sets too large for memory use
`in_memory=False`, which decodes from disk per access (PNG or JPEG, via torchvision).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from multiprocessing.pool import ThreadPool
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from replearn.errors import UserError


def decode_file(path: Path) -> torch.Tensor:
    """uint8 RGB CHW tensor of one preprocessed file (no resize: it is already at the model's size)."""
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as error:
        raise UserError(f"cannot read the preprocessed image {path}: {error}; rerun `replearn preprocess`") from None


def decode_files(paths: Sequence[Path], threads: int = 0) -> np.ndarray:
    """All files as one (N, 3, S, S) uint8 array; decoding runs on threads (torchvision releases the GIL)."""
    if not paths:
        return np.zeros((0, 3, 0, 0), dtype=np.uint8)
    first = decode_file(paths[0])
    images = np.empty((len(paths), *first.shape), dtype=np.uint8)

    def fill(index: int) -> None:
        image = first if index == 0 else decode_file(paths[index])
        if image.shape != first.shape:
            raise UserError(
                f"{paths[index]} is {tuple(image.shape)}, not {tuple(first.shape)} like {paths[0]}; "
                "the folder mixes outputs of different preprocess runs"
            )
        images[index] = image.numpy()

    with ThreadPool(threads or os.cpu_count() or 1) as pool:
        pool.map(fill, range(len(paths)), chunksize=64)
    return images


class PreprocessedImages(Dataset[tuple[torch.Tensor, int]]):
    """Rows of splits.csv as (uint8 CHW tensor, label index) items, plus whole batches at once.

    `rows` is any subset of `read_splits(preprocessed_dir)` (for example seen train). `classes`
    fixes the label order (e.g. a checkpoint's classes); by default it is the sorted labels of
    `rows`. Images stay uint8 so augmentation runs on bytes; divide by 255 for the model.
    """

    def __init__(
        self,
        preprocessed_dir: Path | str,
        rows: pd.DataFrame,
        classes: Sequence[str] | None = None,
        in_memory: bool = True,
        threads: int = 0,
    ) -> None:
        root = Path(preprocessed_dir)
        self.paths = [root / path for path in rows["path"]]
        self.classes = list(classes) if classes is not None else sorted(set(rows["label"]))
        index = {name: i for i, name in enumerate(self.classes)}
        unknown = sorted(set(rows["label"]) - set(index))
        if unknown:
            raise UserError(f"rows of {root} have labels outside the given classes: {', '.join(unknown[:5])}")
        self.labels = np.array([index[label] for label in rows["label"]], dtype=np.int64)
        self.images = decode_files(self.paths, threads) if in_memory else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index]) if self.images is not None else decode_file(self.paths[index])
        return image, int(self.labels[index])

    def load_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images (B, 3, S, S), int64 labels (B,)) for the given row indices, in that order."""
        chosen = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            images = torch.from_numpy(self.images[chosen])
        else:
            images = torch.stack([decode_file(self.paths[i]) for i in chosen])
        return images, torch.from_numpy(self.labels[chosen])
