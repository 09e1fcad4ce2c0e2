"""PK batches: P classes x K images, drawn afresh for every iteration from a seeded, stateless stream.

Training runs by iterations, not epochs: a batch is a random draw, not a slice of a pass over the
data. Each batch is a pure function of (seed, rank, iteration), so resuming at iteration i draws
exactly the batches an uninterrupted run would have drawn, DataLoader workers need no shared state,
and every distributed rank has its own independent stream.
"""

from __future__ import annotations

import logging

import numpy as np

from replearn.errors import UserError

log = logging.getLogger(__name__)


def iteration_seed(seed: int, rank: int, iteration: int, stream: int = 0) -> int:
    """A 63-bit seed for one (rank, iteration) draw; `stream` separates sampling from augmentation.

    >>> iteration_seed(0, 0, 5) == iteration_seed(0, 0, 5) != iteration_seed(0, 1, 5)
    True
    """
    state = np.random.SeedSequence([seed, rank, iteration, stream]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class PKSampler:
    """Indices of P distinct classes x K images each; a class with fewer than K images is drawn with replacement.

    A training split with fewer than P classes (but at least two: a loss needs negatives) puts all of
    them in every batch, with a warning, so the default P suits small datasets too.
    """

    def __init__(self, labels: np.ndarray, classes_per_batch: int, images_per_class: int, seed: int, rank: int = 0):
        self.members = [np.flatnonzero(labels == label) for label in np.unique(labels)]
        if len(self.members) < 2:
            raise UserError(
                f"the training split has {len(self.members)} class; training needs at least 2 (negatives for the loss)"
            )
        if len(self.members) < classes_per_batch:
            log.warning(
                "train.classes_per_batch=%d but the training split has %d classes: every batch holds all of them",
                classes_per_batch,
                len(self.members),
            )
        self.classes_per_batch = min(classes_per_batch, len(self.members))
        self.images_per_class = images_per_class
        self.seed = seed
        self.rank = rank

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.images_per_class

    def batch(self, iteration: int) -> np.ndarray:
        """The dataset indices of batch `iteration`, grouped class by class (P*K,)."""
        rng = np.random.default_rng(iteration_seed(self.seed, self.rank, iteration))
        classes = rng.choice(len(self.members), self.classes_per_batch, replace=False)
        picks = [
            rng.choice(self.members[c], self.images_per_class, replace=len(self.members[c]) < self.images_per_class)
            for c in classes
        ]
        return np.concatenate(picks)
