"""Torch datasets over a preprocessed folder: augmented PK batches for training, plain images for embedding.

Both decode through `replearn.data.images.load_image`, the one decode-and-resize function every
runtime shares, so what the model sees in training is what it sees in evaluation and in ONNX.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from replearn.config import ResizeConfig
from replearn.data.images import load_image
from replearn.training.sampler import PKSampler, iteration_seed


def read_image_uint8(path: Path, resize: ResizeConfig) -> torch.Tensor:
    """uint8 RGB CHW tensor of one image, decoded and resized like everywhere else."""
    return torch.from_numpy(np.array(load_image(path, resize))).permute(2, 0, 1).contiguous()


class PKBatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item i is the whole augmented batch of iteration i: (float32 images (P*K,3,S,S), labels (P*K,)).

    The augmentation's randomness is seeded from (seed, rank, iteration) inside a forked RNG, so a
    batch is the same in a worker or the main process, before or after a resume, and drawing it
    never disturbs the training process's own RNG (dropout).
    """

    def __init__(
        self,
        paths: list[Path],
        labels: np.ndarray,
        sampler: PKSampler,
        augment: Callable[[torch.Tensor], torch.Tensor],
        resize: ResizeConfig,
    ) -> None:
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.sampler = sampler
        self.augment = augment
        self.resize = resize

    def __getitem__(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.sampler.batch(iteration)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(iteration_seed(self.sampler.seed, self.sampler.rank, iteration, stream=1))
            images = torch.stack([self.augment(read_image_uint8(self.paths[i], self.resize)) for i in indices])
        return images, self.labels[torch.from_numpy(indices)]


class ImageDataset(Dataset[torch.Tensor]):
    """float32 CHW images in [0, 1], unaugmented, for embedding."""

    def __init__(self, paths: list[Path], resize: ResizeConfig) -> None:
        self.paths = paths
        self.resize = resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return read_image_uint8(self.paths[index], self.resize).float() / 255.0
