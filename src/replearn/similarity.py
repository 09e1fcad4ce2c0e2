"""Cosine similarity of embeddings, in blocks of bounded memory: the one kernel evaluation and clustering share.

Embeddings are L2-normalised, so the inner product is the cosine similarity, and faiss' flat
inner-product search gives exact neighbours. Nothing here ever holds an N x N matrix: a search runs
one block of query rows at a time, sized by `rows_per_block` from a memory budget, so a million
queries fit on a laptop and the caller can reduce each block to per-query numbers before the next.

- `search_neighbors` / `iterate_neighbors`: the k most similar gallery rows of every query, the
  query itself left out when queries are the gallery (`leave_one_out`);
- `exact_knn`: the same for a set against itself, as the graph builders want it (`Neighbours`);
- `nearest`: the single most similar row, e.g. the nearest cluster prototype;
- `threshold_edges`: every pair at or above a threshold, upper triangle only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

FLOAT_BYTES = 4
# Bytes held per (query, neighbour) entry while a block is processed: faiss's float32 scores and
# int64 ids, our trimmed copies, and the boolean/float64 matrices the metrics derive from them.
BYTES_PER_RESULT = 48


def as_rows(embeddings: np.ndarray) -> np.ndarray:
    """C-contiguous float32 (N, D): what BLAS and faiss want, without copying when it already is.

    >>> as_rows(np.zeros(3)).shape
    Traceback (most recent call last):
    ValueError: embeddings must be a 2-D array (N, D), got shape (3,)
    """
    array = np.ascontiguousarray(embeddings, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {array.shape}")
    return array


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner products are cosine similarities whatever the caller passed.

    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    embeddings = as_rows(embeddings)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def checked_unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """`as_rows`, refusing rows that are not unit length: a silent cosine on raw rows would rank wrongly.

    >>> checked_unit_rows(np.array([[3.0, 4.0]]) / 5).dtype
    dtype('float32')
    """
    array = as_rows(embeddings)
    if array.size and not np.allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-3):
        raise ValueError("embeddings must be L2-normalised (unit rows) for inner product to be cosine similarity")
    return array


def rows_per_block(bytes_per_row: int, memory_mb: float) -> int:
    """How many rows of `bytes_per_row` bytes one block may hold within `memory_mb`.

    >>> rows_per_block(bytes_per_row=8 * 64, memory_mb=1)
    2048
    """
    return max(1, int(memory_mb * 2**20) // max(1, bytes_per_row))


@dataclass(frozen=True)
class NeighborBlock:
    """Neighbours of queries[start:stop], nearest first."""

    start: int
    stop: int
    similarities: np.ndarray  # (stop - start, k) float32, decreasing along each row
    indices: np.ndarray  # (stop - start, k) int64 rows of the gallery


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
    import faiss

    queries, gallery = checked_unit_rows(queries), checked_unit_rows(gallery)
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
    step = rows_per_block(searched * BYTES_PER_RESULT, memory_mb)
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


@dataclass(frozen=True)
class Neighbours:
    """The k nearest other embeddings of every embedding: ids (N, k), -1 where there is none, and similarities."""

    ids: np.ndarray
    similarities: np.ndarray


def exact_knn(embeddings: np.ndarray, k: int, memory_mb: float) -> Neighbours:
    """Exact k nearest neighbours of every row among the others (`search_neighbors` with leave-one-out).

    >>> e = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
    >>> exact_knn(e, 1, memory_mb=1).ids.ravel().tolist()
    [1, 0, 1]
    """
    similarities, ids = search_neighbors(embeddings, embeddings, k, leave_one_out=True, memory_mb=memory_mb)
    return Neighbours(ids, similarities)


def nearest(queries: np.ndarray, rows: np.ndarray, memory_mb: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of and similarity to the most similar of `rows` for each query (-inf when there are none).

    >>> nearest(np.eye(2, dtype=np.float32), np.array([[0.0, 1.0]], dtype=np.float32), memory_mb=1)
    (array([0, 0]), array([0., 1.], dtype=float32))
    """
    if len(rows) == 0 or len(queries) == 0:
        return np.zeros(len(queries), dtype=np.int64), np.full(len(queries), -np.inf, dtype=np.float32)
    similarities, indices = search_neighbors(queries, rows, 1, memory_mb=memory_mb)
    return indices[:, 0], similarities[:, 0]


def threshold_edges(
    embeddings: np.ndarray, threshold: float, block_rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (rows, cols) of every pair i < j with similarity >= threshold, `block_rows` rows at a time.

    Only the upper triangle is computed, which halves the work; each pair appears once. Size the
    blocks with `rows_per_block(len(embeddings) * FLOAT_BYTES, memory_mb)`.

    >>> e = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    >>> [(r.tolist(), c.tolist()) for r, c in threshold_edges(e, 0.9, block_rows=2)]
    [([0], [1]), ([], [])]
    """
    embeddings = as_rows(embeddings)
    n = len(embeddings)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        block = embeddings[start:stop] @ embeddings[start:].T
        # flatnonzero is several times faster than a 2-D nonzero on a sparse mask
        rows, cols = np.divmod(np.flatnonzero(block >= threshold), block.shape[1])
        upper = cols > rows  # drop the diagonal and the pairs an earlier row already yielded
        yield rows[upper] + start, cols[upper] + start
