"""The validation precision@1 that picks the best checkpoint: seen val images against the seen train gallery.

The full retrieval metrics live in replearn.evaluation; training only needs one number, cheaply. It
embeds with the embedding runtime's `embed_batch` and searches with the shared similarity kernel, so
the number is computed as evaluation computes P@1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from replearn.embedding.torch import embed_batch
from replearn.similarity import nearest
from replearn.training.data import PreprocessedImages

SEARCH_MEMORY_MB = 64.0  # one block of nearest-neighbour results; a few thousand val queries fit in one


def capped_rows(count: int, cap: int) -> np.ndarray:
    """Every row index, or `cap` evenly spaced ones: the same rows at every validation, so scores compare.

    >>> capped_rows(10, 4).tolist()
    [0, 3, 6, 9]
    """
    if count <= cap:
        return np.arange(count)
    return np.linspace(0, count - 1, cap).round().astype(np.int64)


def embed_images(
    model: nn.Module, images: PreprocessedImages, batch_size: int, device: torch.device, rows: np.ndarray
) -> np.ndarray:
    """Embeddings (len(rows), D), float32, of the given rows in order; the model runs in eval mode."""
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(rows), batch_size):
        pixels, _ = images.load_batch(rows[start : start + batch_size])
        chunks.append(embed_batch(model, pixels.float().div_(255.0), device))
    model.train(was_training)
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def precision_at_1(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> float:
    """Fraction of queries whose most similar gallery embedding (cosine; unit rows) has the query's label.

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> g = np.array([[0.6, 0.8], [0.8, 0.6]])
    >>> precision_at_1(q, np.array(["a", "b"]), g, np.array(["a", "a"]))
    0.5
    """
    if len(queries) == 0 or len(gallery) == 0:
        return float("nan")
    index, _ = nearest(queries, gallery, memory_mb=SEARCH_MEMORY_MB)
    return float(np.mean(np.asarray(gallery_labels)[index] == np.asarray(query_labels)))
