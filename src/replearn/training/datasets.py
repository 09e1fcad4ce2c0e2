"""Augmented PK batches over the preprocessed images that `replearn.training.data` holds in memory."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from replearn.training.data import PreprocessedImages
from replearn.training.sampler import PKSampler, iteration_seed


class PKBatchDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item i is the whole augmented batch of iteration i: (float32 images (P*K,3,S,S) in [0, 1], labels (P*K,)).

    The augmentation's randomness is seeded from (seed, rank, iteration) inside a forked RNG, so a
    batch is the same in a worker or the main process, before or after a resume, and drawing it
    never disturbs the training process's own RNG (dropout).
    """

    def __init__(
        self, images: PreprocessedImages, sampler: PKSampler, augment: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.images = images
        self.sampler = sampler
        self.augment = augment

    def __getitem__(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = self.images.load_batch(self.sampler.batch(iteration))
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone: torch.manual_seed would also reseed the GPUs' dropout streams.
            seed = iteration_seed(self.sampler.seed, self.sampler.rank, iteration, stream=1)
            torch.default_generator.manual_seed(seed)
            return torch.stack([self.augment(image) for image in pixels]), labels
