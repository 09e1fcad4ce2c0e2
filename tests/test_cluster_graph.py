"""Threshold graph and connected components on hand-made embeddings whose components are known."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from replearn.clustering.components import (
    components_from_edge_blocks,
    find_components,
    number_by_size,
)
from replearn.clustering.graph import knn_graph
from replearn.clustering.methods import cluster_embeddings
from replearn.clustering.metrics import clustering_scores
from replearn.config import ClusterConfig
from replearn.similarity import exact_knn, threshold_edges


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two labelings describe the same partition (labels may differ)."""
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(pairs[0]) == len(np.unique(a)) == len(np.unique(b))


def blobs(sizes: list[int], dim: int = 16, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight Gaussian blobs around orthogonal centres (similarity between blobs ~0), with their blob index."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(sizes)]
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return unit(centres[truth] + spread * rng.normal(size=(len(truth), dim))), truth


def random_walk_chain(n: int, dim: int, offset: int, total_dim: int, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors in coordinates [offset, offset+dim), each at similarity exactly 0.95 to the previous one."""
    step = np.sqrt(1 / 0.95**2 - 1)
    chain = np.zeros((n, dim))
    chain[0, 0] = 1.0
    noise = rng.normal(size=(n, dim))
    for i in range(1, n):
        direction = noise[i] - (noise[i] @ chain[i - 1]) * chain[i - 1]
        direction /= np.linalg.norm(direction)
        chain[i] = (chain[i - 1] + step * direction) / np.sqrt(1 + step**2)
    out = np.zeros((n, total_dim))
    out[:, offset : offset + dim] = chain
    return out.astype(np.float32)


def test_blocked_edges_equal_the_dense_matrix() -> None:
    rng = np.random.default_rng(1)
    embeddings = unit(rng.normal(size=(300, 8)))
    dense = embeddings @ embeddings.T
    expected = {(i, j) for i, j in zip(*np.nonzero(dense >= 0.5), strict=True) if i < j}
    found = {
        (int(i), int(j))
        for rows, cols in threshold_edges(embeddings, 0.5, block_rows=7)
        for i, j in zip(rows, cols, strict=True)
    }
    assert found == expected


def test_a_chain_longer_than_the_recursion_limit_is_one_cluster() -> None:
    """The seed's recursive traversal dies here; the graph path must not. Known components:
    a 50k chain, a 500 chain in orthogonal coordinates, and 8 isolated images."""
    rng = np.random.default_rng(0)
    n_long = 50_000
    assert n_long > sys.getrecursionlimit()
    long_chain = random_walk_chain(n_long, 12, 0, 32, rng)
    short_chain = random_walk_chain(500, 12, 12, 32, rng)
    embeddings = np.concatenate([long_chain, short_chain])
    singles = np.zeros((8, 32), dtype=np.float32)
    singles[np.arange(8), 24 + np.arange(8)] = 1.0
    embeddings = np.concatenate([embeddings, singles])

    ids = cluster_embeddings(embeddings, 0.9, ClusterConfig(method="components", min_size=2))

    assert (ids[:n_long] == 1).all()
    assert (ids[n_long : n_long + 500] == 2).all()
    assert (ids[n_long + 500 :] == 0).all()


def test_compacting_edges_keeps_the_components() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    blocks = [(rng.integers(0, n, 300), rng.integers(0, n, 300)) for _ in range(5)]
    loose = components_from_edge_blocks(n, blocks, max_edges=10**9)
    compacted = components_from_edge_blocks(n, blocks, max_edges=50)
    assert same_partition(loose, compacted)


def test_clusters_are_numbered_by_size_and_small_ones_go_to_zero() -> None:
    embeddings, truth = blobs([2, 5, 1, 3, 5])
    ids = cluster_embeddings(embeddings, 0.8, ClusterConfig(method="components", min_size=3))
    # sizes 5 and 5 tie: the one whose first image comes first gets the lower id
    expected = {0: 0, 1: 1, 2: 0, 3: 3, 4: 2}
    assert ids.tolist() == [expected[t] for t in truth]


def test_min_size_one_keeps_singletons() -> None:
    embeddings, truth = blobs([1, 1, 2])
    assert sorted(cluster_embeddings(embeddings, 0.8, ClusterConfig(method="components", min_size=1)).tolist()) == [
        1,
        1,
        2,
        3,
    ]


def test_number_by_size_of_nothing() -> None:
    assert number_by_size(np.zeros(0, dtype=np.int64), 3).tolist() == []


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_graph_finds_the_blobs(index: str) -> None:
    """Above exact_max_n the kNN graph takes over; on well-separated blobs it recovers them (nearly) exactly."""
    embeddings, truth = blobs([400] * 8 + [3] * 10, dim=32, spread=0.03)
    config = ClusterConfig(min_size=3, exact_max_n=100, approximate_index=index, neighbors=10)
    approximate = find_components(embeddings, 0.8, config)
    exact = find_components(embeddings, 0.8, ClusterConfig())
    assert same_partition(exact, truth)
    assert clustering_scores(truth, approximate + 1)["pairwise_f1"] > 0.99
    if index == "ivf":
        assert same_partition(approximate, truth)


def test_mutual_knn_cuts_a_bridge_between_two_blobs() -> None:
    """One image halfway between two classes chains them together; mutual kNN drops its edges."""
    rng = np.random.default_rng(3)
    u, v = np.eye(8)[0], np.eye(8)[0] * 0.6 + np.eye(8)[1] * 0.8  # u.v = 0.6 < threshold
    blob_u = unit(u + 0.03 * rng.normal(size=(30, 8)))
    blob_v = unit(v + 0.03 * rng.normal(size=(30, 8)))
    bridge = unit((u + v)[None])  # similarity ~0.89 to both centres
    embeddings = np.concatenate([blob_u, blob_v, bridge])

    plain = cluster_embeddings(embeddings, 0.85, ClusterConfig(method="components", min_size=2))
    refined = cluster_embeddings(
        embeddings, 0.85, ClusterConfig(method="components", min_size=2, refine="mutual_knn", neighbors=10)
    )

    assert len(set(plain.tolist())) == 1
    # mutual kNN may also shed a blob's outlier to cluster 0; what matters is that the blobs separate
    blob_u_ids, blob_v_ids = set(refined[:30].tolist()) - {0}, set(refined[30:60].tolist()) - {0}
    assert len(blob_u_ids) == 1 and len(blob_v_ids) == 1 and blob_u_ids != blob_v_ids
    assert refined[60] == 0


def test_knn_graph_respects_the_threshold() -> None:
    embeddings, _ = blobs([5, 5])
    neighbours = exact_knn(embeddings, 9, memory_mb=1)
    graph = knn_graph(neighbours, 0.8, mutual=False)
    rows, cols = graph.nonzero()
    assert (np.einsum("ij,ij->i", embeddings[rows], embeddings[cols]) >= 0.8).all()
    assert graph.nnz == 2 * 5 * 4
