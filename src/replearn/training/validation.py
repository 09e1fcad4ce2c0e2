"""Embedding preprocessed images with a torch model, and the validation precision@1 that picks the best checkpoint.

The full retrieval metrics live in replearn.evaluation; training only needs one number, cheaply.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from replearn.training.data import PreprocessedImages

QUERY_BLOCK = 1024  # query rows per similarity block: 1024 x a 20k gallery is 80 MB


def capped_rows(count: int, cap: int) -> np.ndarray:
    """Every row index, or `cap` evenly spaced ones: the same rows at every validation, so scores compare.

    >>> capped_rows(10, 4).tolist()
    [0, 3, 6, 9]
    """
    if count <= cap:
        return np.arange(count)
    return np.linspace(0, count - 1, cap).round().astype(np.int64)


@torch.no_grad()
def embed_images(
    model: nn.Module, images: PreprocessedImages, batch_size: int, device: torch.device, rows: np.ndarray
) -> torch.Tensor:
    """Embeddings (len(rows), D), float32 on the CPU, of the given rows in order; the model runs in eval mode."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(rows), batch_size):
        pixels, _ = images.load_batch(rows[start : start + batch_size])
        chunks.append(model(pixels.to(device).float().div_(255.0)).float().cpu())
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
    blocks = torch.split(queries, QUERY_BLOCK)
    nearest = torch.cat([(block @ gallery.T).argmax(dim=1) for block in blocks]).numpy()
    return float(np.mean(np.asarray(gallery_labels)[nearest] == np.asarray(query_labels)))
