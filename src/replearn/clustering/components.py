"""Connected components of the threshold graph, numbered by size, small ones sent to cluster 0.

The seed walked the graph with a recursive function, which overflows Python's stack on a chain
of a few thousand images; scipy.sparse.csgraph finds components iteratively in C. The exact
path never even keeps every edge: when the edges found so far pass a budget they are replaced by
a spanning star per component, which connects exactly the same images. Memory then stays
O(N + one block) however dense the clusters are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from replearn.clustering.graph import approximate_knn, knn_graph
from replearn.config import ClusterConfig
from replearn.console import track
from replearn.similarity import FLOAT_BYTES, Neighbours, as_rows, exact_knn, rows_per_block, threshold_edges

log = logging.getLogger(__name__)

UNCLUSTERED = 0


def label_components(graph: sp.spmatrix | sp.sparray) -> np.ndarray:
    """Component label of every node of an undirected sparse graph (arbitrary label order).

    >>> label_components(sp.csr_matrix(([True], ([0], [2])), shape=(3, 3))).tolist()
    [0, 1, 0]
    """
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def _graph_from_edges(n: int, rows: list[np.ndarray], cols: list[np.ndarray]) -> sp.csr_matrix:
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    col = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(row), dtype=bool), (row, col)), shape=(n, n))


def star_edges(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges from every node to the first node of its component: the same components with < N edges.

    >>> [a.tolist() for a in star_edges(np.array([5, 7, 5, 5]))]
    [[2, 3], [0, 0]]
    """
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    roots = first[inverse]
    linked = roots != np.arange(len(labels))
    return np.nonzero(linked)[0], roots[linked]


def components_from_edge_blocks(n: int, blocks: Iterable[tuple[np.ndarray, np.ndarray]], max_edges: int) -> np.ndarray:
    """Component labels from a stream of edge blocks, compacting to star edges whenever `max_edges` is passed.

    >>> blocks = [(np.array([0]), np.array([1])), (np.array([1]), np.array([2]))]
    >>> components_from_edge_blocks(4, blocks, max_edges=1).tolist()
    [0, 0, 0, 1]
    """
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    held = 0
    for block_rows, block_cols in blocks:
        rows.append(block_rows)
        cols.append(block_cols)
        held += len(block_rows)
        if held > max_edges:
            star_rows, star_cols = star_edges(label_components(_graph_from_edges(n, rows, cols)))
            rows, cols, held = [star_rows], [star_cols], len(star_rows)
    return label_components(_graph_from_edges(n, rows, cols))


def number_by_size(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Renumber components 1, 2, ... from largest to smallest; components below min_size become 0.

    Ties in size go to the component whose first member comes first, so the numbering is a pure
    function of the partition and the input order.

    >>> number_by_size(np.array([4, 4, 9, 9, 9, 2]), min_size=2).tolist()
    [2, 2, 1, 1, 1, 0]
    """
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first, inverse, sizes = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -sizes))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    numbered = rank[inverse]
    numbered[sizes[inverse] < min_size] = UNCLUSTERED
    return numbered


def neighbours_for(embeddings: np.ndarray, config: ClusterConfig) -> Neighbours:
    """The k = config.neighbors nearest neighbours: exact up to config.exact_max_n images, faiss' approximate above."""
    if len(embeddings) <= config.exact_max_n:
        return exact_knn(embeddings, config.neighbors, config.block_memory_mb)
    log.info(
        "%s images > cluster.exact_max_n: approximate %s kNN graph (k=%d)",
        f"{len(embeddings):,}",
        config.approximate_index,
        config.neighbors,
    )
    return approximate_knn(embeddings, config.neighbors, config.approximate_index, config.nprobe, seed=config.seed)


def find_components(embeddings: np.ndarray, threshold: float, config: ClusterConfig) -> np.ndarray:
    """Component labels of the threshold graph (cluster.method "components", the seed's rule).

    Exact up to config.exact_max_n images, a kNN graph above; with refine="mutual_knn" an edge also
    needs both ends in each other's k nearest neighbours.

    >>> e = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)
    >>> find_components(e, 0.9, ClusterConfig()).tolist()
    [0, 0, 1]
    """
    embeddings = as_rows(embeddings)
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n > config.exact_max_n or config.refine == "mutual_knn":
        neighbours = neighbours_for(embeddings, config)
        return label_components(knn_graph(neighbours, threshold, mutual=config.refine == "mutual_knn"))
    block_rows = rows_per_block(n * FLOAT_BYTES, config.block_memory_mb)
    blocks = threshold_edges(embeddings, threshold, block_rows)
    total = -(-n // block_rows)
    return components_from_edge_blocks(n, track(blocks, total, "similarity graph", unit="blocks"), max_edges=8 * n)
