"""kNN similarity graphs over L2-normalised embeddings, and the approximate neighbours that scale them out.

The exact builders (blocked threshold edges, exact kNN) live in replearn.similarity. Here:

- approximate: faiss finds the k nearest neighbours of every embedding (IVF or HNSW over inner
  products), and the threshold is applied to those k. This is what makes millions of images
  tractable; the price is that a pair can be missed when the index does not return it.
- `knn_graph`: the sparse, similarity-weighted graph of kNN pairs at or above a threshold.

Both work on inner products, which equal cosine similarities because the model L2-normalises.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from replearn.similarity import Neighbours, as_rows


def approximate_knn(
    embeddings: np.ndarray,
    k: int,
    index: Literal["ivf", "hnsw"] = "ivf",
    nprobe: int = 16,
    ef_search: int = 128,
    seed: int = 0,
) -> Neighbours:
    """Approximate k nearest neighbours with faiss (self excluded).

    IVF partitions the space with k-means on a sample (about 4 sqrt(N) lists) and searches the
    `nprobe` nearest lists; it builds in seconds even at a million vectors. HNSW (M=32) builds
    slower but recalls better at the same search cost.
    """
    embeddings = as_rows(embeddings)
    n = len(embeddings)
    k = max(0, min(k, n - 1))
    if k == 0:
        return Neighbours(np.full((n, 0), -1, dtype=np.int64), np.zeros((n, 0), dtype=np.float32))
    if index == "hnsw":
        search_index = build_hnsw(embeddings, ef_search=max(ef_search, k + 1))
    else:
        search_index = build_ivf(embeddings, nprobe, seed)
    found_sims, found_ids = search_index.search(embeddings, k + 1)
    return drop_self(found_ids, found_sims, k)


def build_hnsw(embeddings: np.ndarray, ef_search: int) -> Any:
    """faiss HNSW graph (M=32) over inner products."""
    import faiss

    index = faiss.IndexHNSWFlat(embeddings.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.hnsw.efSearch = ef_search
    index.add(embeddings)
    return index


def build_ivf(embeddings: np.ndarray, nprobe: int, seed: int) -> Any:
    """faiss IVF-Flat over inner products with about 4 sqrt(N) lists.

    Its k-means runs 10 iterations on a seeded sample of 40 points per list (faiss asks for 39): the
    lists only need to be a rough partition, and k-means is what dominates the build at a million images.
    """
    import faiss

    n, dim = embeddings.shape
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 40))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 10
    sample = embeddings[np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)]
    index.train(sample)
    index.add(embeddings)
    index.nprobe = min(nprobe, nlist)
    return index


def drop_self(ids: np.ndarray, sims: np.ndarray, k: int) -> Neighbours:
    """Remove each row's own id from a k+1 neighbour search and keep k, in similarity order.

    The row itself is usually, but not always, first (duplicates tie with it), so it is
    removed by id rather than by position.

    >>> drop_self(np.array([[0, 1], [0, 1]]), np.array([[1.0, 0.5], [1.0, 1.0]]), 1).ids.tolist()
    [[1], [0]]
    """
    rows = np.arange(len(ids))[:, None]
    is_self = ids == rows
    keep = np.where(is_self, -np.inf, np.where(ids < 0, -np.inf, sims))
    order = np.argsort(-keep, axis=1, kind="stable")[:, :k]
    kept_ids = np.take_along_axis(ids, order, axis=1).astype(np.int64)
    kept_sims = np.take_along_axis(keep, order, axis=1).astype(np.float32)
    kept_ids[~np.isfinite(kept_sims)] = -1
    return Neighbours(kept_ids, kept_sims)


def knn_graph(neighbours: Neighbours, threshold: float, mutual: bool) -> sp.csr_matrix:
    """Undirected graph of kNN pairs at or above the threshold, weighted by their similarity.

    `mutual` keeps a pair only if each is in the other's k: the refinement against chaining, since
    one stray image close to two classes is in both of their neighbour lists but rarely has both
    classes in its own top k. Weights are floored at 1e-6 so that a pair at similarity 0 (possible
    with a threshold <= 0) stays an edge instead of vanishing from the sparse matrix.

    >>> n = Neighbours(np.array([[1], [2], [1]]), np.array([[0.9], [0.8], [0.8]], dtype=np.float32))
    >>> int(knn_graph(n, 0.5, mutual=False).nnz), int(knn_graph(n, 0.5, mutual=True).nnz)
    (4, 2)
    >>> knn_graph(n, 0.5, mutual=False).toarray()[0].tolist()
    [0.0, 0.8999999761581421, 0.0]
    """
    n = len(neighbours.ids)
    keep = (neighbours.ids >= 0) & (neighbours.similarities >= threshold)
    rows = np.nonzero(keep)[0]
    weights = np.maximum(neighbours.similarities[keep], 1e-6).astype(np.float32)
    directed = sp.csr_matrix((weights, (rows, neighbours.ids[keep])), shape=(n, n))
    graph = directed.minimum(directed.T) if mutual else directed.maximum(directed.T)
    return sp.csr_matrix(graph)
