"""Embedding image lists with a torch model and the validation precision@1 that picks the best checkpoint.

The full retrieval metrics live in replearn.evaluation; training only needs one number, cheaply.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from replearn.config import ResizeConfig
from replearn.training.datasets import ImageDataset


@torch.no_grad()
def embed_paths(
    model: nn.Module, paths: list[Path], resize: ResizeConfig, batch_size: int, device: torch.device, workers: int = 0
) -> torch.Tensor:
    """Embeddings (N, D) float32 on the CPU of the images at `paths`, in order, model in eval mode."""
    was_training = model.training
    model.eval()
    # Its own generator: drawing the loader's base seed must not consume the global RNG (bit-exact resume).
    loader = DataLoader(
        ImageDataset(paths, resize), batch_size=batch_size, num_workers=workers, generator=torch.Generator()
    )
    chunks = [model(images.to(device, non_blocking=True)).float().cpu() for images in loader]
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, 0)


def precision_at_1(
    queries: torch.Tensor, query_labels: np.ndarray, gallery: torch.Tensor, gallery_labels: np.ndarray
) -> float:
    """Fraction of queries whose most similar gallery embedding (cosine) has the query's label.

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> g = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    >>> precision_at_1(q, np.array(["a", "b"]), g, np.array(["a", "a"]))
    0.5
    """
    if len(queries) == 0 or len(gallery) == 0:
        return float("nan")
    nearest = (queries @ gallery.T).argmax(dim=1).numpy()
    return float(np.mean(np.asarray(gallery_labels)[nearest] == np.asarray(query_labels)))
