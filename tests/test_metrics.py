"""Retrieval metrics on hand-made neighbour lists, and equality with pytorch-metric-learning's AccuracyCalculator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from replearn.evaluation.metrics import (
    average_macro,
    average_micro,
    average_per_class,
    average_precision_at_r,
    count_relevant,
    knn_accuracy,
    precision_at_1,
    r_precision,
    recall_at_k,
    score_clustering,
    vote_majority,
)
from replearn.evaluation.retrieval import score_retrieval

# Three queries of class 0 with R = 3 relevant gallery items each; neighbour labels nearest first.
NEIGHBOR_LABELS = np.array(
    [
        [0, 0, 0, 1, 2],  # perfect
        [1, 0, 2, 0, 0],  # correct at ranks 2 and 4 (and 5, beyond R)
        [1, 2, 1, 2, 0],  # correct only at rank 5, beyond R
    ]
)
QUERY_LABELS = np.array([0, 0, 0])
HITS = QUERY_LABELS[:, None] == NEIGHBOR_LABELS
R = np.array([3, 3, 3])


def test_precision_and_recall_by_hand() -> None:
    assert precision_at_1(HITS).tolist() == [1.0, 0.0, 0.0]
    assert recall_at_k(HITS, 1).tolist() == [1.0, 0.0, 0.0]
    assert recall_at_k(HITS, 2).tolist() == [1.0, 1.0, 0.0]
    assert recall_at_k(HITS, 5).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="at least 6 neighbours"):
        recall_at_k(HITS, 6)


def test_r_precision_and_map_at_r_by_hand() -> None:
    np.testing.assert_allclose(r_precision(HITS, R), [1.0, 1 / 3, 0.0])
    # AP@R of row 2: one hit within R=3, at rank 2: precision 1/2, divided by R = 3.
    np.testing.assert_allclose(average_precision_at_r(HITS, R), [1.0, (1 / 2) / 3, 0.0])
    # A smaller R changes what counts: row 2 with R = 2 has its hit at rank 2 of 2.
    np.testing.assert_allclose(average_precision_at_r(HITS, np.array([1, 2, 1])), [1.0, 0.25, 0.0])
    assert np.isnan(r_precision(HITS[:1], np.array([0])))[0]
    with pytest.raises(ValueError, match="R=6"):
        r_precision(HITS, np.array([6, 1, 1]))


def test_knn_vote_by_hand() -> None:
    assert vote_majority(NEIGHBOR_LABELS).tolist() == [0, 0, 1]  # row 2: classes 1 and 2 tie, 1 is nearer
    assert knn_accuracy(NEIGHBOR_LABELS, QUERY_LABELS, k=5).tolist() == [1.0, 1.0, 0.0]
    # With k = 3 row 1 sees [1, 0, 2]: a three-way tie, won by the nearest, class 1.
    assert knn_accuracy(NEIGHBOR_LABELS, QUERY_LABELS, k=3).tolist() == [1.0, 0.0, 0.0]


def test_relevant_counts_and_averages() -> None:
    assert count_relevant(np.array([0, 1, 5]), np.array([1, 0, 0, 1, 1])).tolist() == [2, 3, 0]
    assert count_relevant(np.array([0, 1]), np.array([], dtype=np.int64)).tolist() == [0, 0]
    values, labels = np.array([1.0, 1.0, 1.0, 0.0, np.nan]), np.array([0, 0, 0, 1, 1])
    assert average_micro(values) == 0.75
    assert average_macro(values, labels) == 0.5
    classes, means, counts = average_per_class(values, labels)
    assert classes.tolist() == [0, 1] and means.tolist() == [1.0, 0.0] and counts.tolist() == [3, 1]
    assert np.isnan(average_micro(np.array([np.nan])))


def test_clustering_scores() -> None:
    assert score_clustering(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == {"nmi": 1.0, "ami": 1.0}
    scores = score_clustering(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
    assert scores["nmi"] == pytest.approx(0.0, abs=1e-12)


def clustered_embeddings(seed: int, classes: int, per_class: int, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Noisy class centres on the unit sphere: neighbours are mostly, not always, of the same class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    points = centres[labels] + rng.normal(scale=1.2, size=(len(labels), dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32), labels


PML_METRICS = {
    "precision_at_1": "precision_at_1",
    "r_precision": "r_precision",
    "map_at_r": "mean_average_precision_at_r",
}


def pml_scores(avg_of_avgs: bool, *arrays: np.ndarray) -> dict[str, float]:
    calculator = AccuracyCalculator(
        include=tuple(PML_METRICS.values()), k="max_bin_count", avg_of_avgs=avg_of_avgs, device=torch.device("cpu")
    )
    return calculator.get_accuracy(*(torch.from_numpy(a) for a in arrays))


def test_query_vs_gallery_equals_pytorch_metric_learning() -> None:
    gallery, gallery_labels = clustered_embeddings(0, classes=8, per_class=12)
    queries, query_labels = clustered_embeddings(1, classes=9, per_class=5)  # class 8 is lone: not in the gallery
    # Unequal class sizes in the gallery, so R differs between queries.
    keep = gallery_labels != 3
    keep[np.flatnonzero(gallery_labels == 3)[:4]] = True
    gallery, gallery_labels = gallery[keep], gallery_labels[keep]
    ours = score_retrieval(
        queries, query_labels, gallery, gallery_labels,
        leave_one_out=False, recall_at=[1, 2], knn_k=3, keep_neighbors=2, memory_mb=0.01,
    ).summarise()  # fmt: skip
    assert ours["lone_queries"] == 5
    micro = pml_scores(False, queries, query_labels, gallery, gallery_labels)
    macro = pml_scores(True, queries, query_labels, gallery, gallery_labels)
    for name, pml_name in PML_METRICS.items():
        assert ours[name] == pytest.approx(micro[pml_name], abs=1e-6), name
        assert ours[f"macro/{name}"] == pytest.approx(macro[pml_name], abs=1e-6), name
    assert ours["precision_at_1"] == ours["recall_at_1"]


def test_leave_one_out_equals_pytorch_metric_learning() -> None:
    """PML's leave-one-out (reference=None) drops each query's own index, and R counts the others."""
    embeddings, labels = clustered_embeddings(2, classes=6, per_class=10)
    labels[-1] = 99  # a class of one image: lone under leave-one-out
    ours = score_retrieval(
        embeddings, labels, embeddings, labels,
        leave_one_out=True, recall_at=[1], knn_k=5, keep_neighbors=1, memory_mb=0.01,
    ).summarise()  # fmt: skip
    assert ours["lone_queries"] == 1
    micro = pml_scores(False, embeddings, labels)
    macro = pml_scores(True, embeddings, labels)
    for name, pml_name in PML_METRICS.items():
        assert ours[name] == pytest.approx(micro[pml_name], abs=1e-6), name
        assert ours[f"macro/{name}"] == pytest.approx(macro[pml_name], abs=1e-6), name


def test_nmi_and_ami_equal_pytorch_metric_learning_given_the_same_clustering() -> None:
    """PML clusters with its own k-means; handed ours (kmeans_func), its NMI/AMI must equal ours."""
    from replearn.evaluation.kmeans import cluster_kmeans

    embeddings, labels = clustered_embeddings(3, classes=5, per_class=12)
    cluster_ids = cluster_kmeans(embeddings, 5, seed=0)
    calculator = AccuracyCalculator(
        include=("NMI", "AMI"),
        kmeans_func=lambda x, n: torch.from_numpy(cluster_kmeans(x.numpy(), n, seed=0)),
        device=torch.device("cpu"),
    )
    pml = calculator.get_accuracy(torch.from_numpy(embeddings), torch.from_numpy(labels))
    ours = score_clustering(labels, cluster_ids)
    assert 0.0 < ours["nmi"] < 1.0  # a real, imperfect clustering
    assert ours["nmi"] == pytest.approx(pml["NMI"], abs=1e-12)
    assert ours["ami"] == pytest.approx(pml["AMI"], abs=1e-12)
