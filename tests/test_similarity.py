"""Exact blocked kNN: same neighbours as brute force, whatever the block size; leave-one-out drops the query."""

from __future__ import annotations

import numpy as np
import pytest

from replearn.evaluation.kmeans import cluster_kmeans
from replearn.evaluation.metrics import score_clustering
from replearn.similarity import iterate_neighbors, search_neighbors


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    points = np.random.default_rng(seed).normal(size=(rows, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def brute_force(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    similarities = queries @ gallery.T
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(similarities, order, axis=1), order


@pytest.mark.parametrize("memory_mb", [0.001, 0.05, 64])
def test_blocked_search_equals_brute_force(memory_mb: float) -> None:
    queries, gallery = unit_rows(300, 32, 0), unit_rows(500, 32, 1)
    similarities, indices = search_neighbors(queries, gallery, 7, memory_mb=memory_mb)
    expected_similarities, expected_indices = brute_force(queries, gallery, 7)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)


def test_small_budget_really_splits_into_blocks() -> None:
    blocks = list(iterate_neighbors(unit_rows(100, 8, 0), unit_rows(50, 8, 1), 4, memory_mb=0.001))
    assert len(blocks) > 10
    assert blocks[0].start == 0 and blocks[-1].stop == 100
    assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:], strict=False))


def test_leave_one_out_drops_only_the_query_itself() -> None:
    data = unit_rows(200, 16, 2)
    similarities, indices = search_neighbors(data, data, 5, leave_one_out=True, memory_mb=0.01)
    assert indices.shape == (200, 5)
    assert not (indices == np.arange(200)[:, None]).any()
    masked = data @ data.T
    np.fill_diagonal(masked, -np.inf)
    np.testing.assert_array_equal(indices, np.argsort(-masked, axis=1, kind="stable")[:, :5])


def test_leave_one_out_with_exact_duplicates_keeps_k_neighbours() -> None:
    data = np.repeat(unit_rows(3, 8, 3), 4, axis=0)  # every row has three identical twins
    _, indices = search_neighbors(data, data, 3, leave_one_out=True, memory_mb=1)
    assert indices.shape == (12, 3)
    assert not (indices == np.arange(12)[:, None]).any()
    assert (indices // 4 == np.arange(12)[:, None] // 4).all()  # the twins, not another group


def test_k_is_capped_by_the_gallery() -> None:
    similarities, indices = search_neighbors(unit_rows(4, 8, 0), unit_rows(3, 8, 1), 10, memory_mb=1)
    assert indices.shape == (4, 3)
    assert search_neighbors(unit_rows(2, 8, 0), unit_rows(2, 8, 0), 5, leave_one_out=True, memory_mb=1)[1].shape == (
        2,
        1,
    )
    assert search_neighbors(unit_rows(1, 8, 0), unit_rows(1, 8, 0), 5, leave_one_out=True, memory_mb=1)[1].shape == (
        1,
        0,
    )


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="L2-normalised"):
        search_neighbors(np.ones((2, 4)), unit_rows(3, 4, 0), 1, memory_mb=1)
    with pytest.raises(ValueError, match="dimensions"):
        search_neighbors(unit_rows(2, 4, 0), unit_rows(3, 8, 0), 1, memory_mb=1)


def test_kmeans_recovers_separated_classes() -> None:
    centres = np.eye(8, dtype=np.float32)[:4]
    labels = np.repeat(np.arange(4), 25)
    points = centres[labels] + np.random.default_rng(0).normal(scale=0.05, size=(100, 8))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    assert score_clustering(labels, cluster_kmeans(points, 4, seed=0))["nmi"] == pytest.approx(1.0)
