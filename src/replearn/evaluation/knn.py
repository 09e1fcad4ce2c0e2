"""Exact k nearest neighbours by cosine similarity with faiss, in query blocks of bounded memory.

Embeddings are L2-normalised, so the inner product is the cosine similarity and a flat
inner-product index gives exact neighbours. The gallery is held once (1M x 128 float32 is 512 MB);
queries go through in blocks sized so that one block's results stay under a memory budget, which is
what lets a 1M-query evaluation run on a laptop while the caller reduces each block to per-query
numbers before asking for the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np

# Bytes held per (query, neighbour) entry while a block is processed: faiss's float32 scores and
# int64 ids, our trimmed copies, and the boolean/float64 matrices the metrics derive from them.
BYTES_PER_RESULT = 48


@dataclass(frozen=True)
class NeighborBlock:
    """Neighbours of queries[start:stop], nearest first."""

    start: int
    stop: int
    similarities: np.ndarray  # (stop - start, k) float32, decreasing along each row
    indices: np.ndarray  # (stop - start, k) int64 rows of the gallery


def as_unit_float32(embeddings: np.ndarray) -> np.ndarray:
    """C-contiguous float32 rows, as faiss wants them; rows must already have unit length.

    >>> as_unit_float32(np.array([[3.0, 4.0]]) / 5).dtype
    dtype('float32')
    """
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array, got shape {array.shape}")
    if array.size and not np.allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-3):
        raise ValueError("embeddings must be L2-normalised (unit rows) for inner product to be cosine similarity")
    return array


def rows_per_block(k: int, memory_mb: float, bytes_per_entry: int = BYTES_PER_RESULT) -> int:
    """How many queries fit one block when each needs k results of `bytes_per_entry` bytes.

    >>> rows_per_block(k=8, memory_mb=1, bytes_per_entry=64)
    2048
    """
    return max(1, int(memory_mb * 2**20) // max(1, k * bytes_per_entry))


def iterate_neighbors(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    leave_one_out: bool = False,
    memory_mb: float,
) -> Iterator[NeighborBlock]:
    """Yield the k most similar gallery rows for consecutive blocks of queries.

    With `leave_one_out`, queries ARE the gallery and each query's own row is dropped from its
    neighbours; as pytorch-metric-learning does, one extra neighbour is searched and the query's
    own index removed, or the last one when exact duplicates pushed the query out of its own list.
    k is capped at the number of gallery rows a query can have as neighbours.
    """
    queries, gallery = as_unit_float32(queries), as_unit_float32(gallery)
    if leave_one_out and queries.shape != gallery.shape:
        raise ValueError("leave-one-out needs the queries to be the gallery")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dimensions, the gallery {gallery.shape[1]}")
    k = min(k, len(gallery) - int(leave_one_out))
    if k < 1 or len(queries) == 0:
        return
    searched = k + int(leave_one_out)
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery)
    step = rows_per_block(searched, memory_mb)
    for start in range(0, len(queries), step):
        stop = min(start + step, len(queries))
        similarities, indices = index.search(queries[start:stop], searched)
        if leave_one_out:
            own = indices == np.arange(start, stop)[:, None]
            own[~own.any(axis=1), -1] = True
            keep = ~own
            similarities = similarities[keep].reshape(stop - start, k)
            indices = indices[keep].reshape(stop - start, k)
        yield NeighborBlock(start, stop, similarities, indices)


def search_neighbors(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    leave_one_out: bool = False,
    memory_mb: float,
) -> tuple[np.ndarray, np.ndarray]:
    """All blocks of `iterate_neighbors` stacked: (similarities, indices), each (queries, k).

    >>> unit = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    >>> search_neighbors(unit, unit, k=1, leave_one_out=True, memory_mb=1)[1].ravel().tolist()
    [1, 0, 1]
    """
    blocks = list(iterate_neighbors(queries, gallery, k, leave_one_out=leave_one_out, memory_mb=memory_mb))
    if not blocks:
        width = max(0, min(k, len(gallery) - int(leave_one_out)))
        return np.zeros((len(queries), width), np.float32), np.zeros((len(queries), width), np.int64)
    return np.concatenate([b.similarities for b in blocks]), np.concatenate([b.indices for b in blocks])


def cluster_kmeans(embeddings: np.ndarray, n_clusters: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """k-means cluster id per row (faiss, spherical since rows are unit vectors), as used for NMI/AMI.

    20 iterations is what pytorch-metric-learning's AccuracyCalculator runs.

    >>> points = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99]])
    >>> ids = cluster_kmeans(points / np.linalg.norm(points, axis=1, keepdims=True), 2)
    >>> bool(ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2])
    True
    """
    data = as_unit_float32(embeddings)
    if n_clusters >= len(data):
        return np.arange(len(data))
    kmeans = faiss.Kmeans(
        data.shape[1], n_clusters, niter=iterations, seed=seed, spherical=True, min_points_per_centroid=1
    )
    kmeans.train(data)
    return kmeans.index.search(data, 1)[1].ravel()
