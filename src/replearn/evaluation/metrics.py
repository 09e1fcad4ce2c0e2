"""Retrieval and clustering metrics as pure functions on numpy arrays.

Every retrieval metric takes `hits`, a boolean (queries, k) matrix whose row i says, neighbour by
neighbour in order of decreasing similarity, whether the neighbour shares query i's class. Working
from hits keeps the functions independent of how neighbours were found (faiss, brute force, a test's
hand-made list) and lets the caller compute them block by block, so no metric needs all queries'
neighbours in memory at once. Per-query values come back as arrays; averaging (micro, macro, per class)
is a separate step, because which queries to average over is a protocol decision, not a metric's.

Definitions follow "A Metric Learning Reality Check" (Musgrave et al. 2020) and
pytorch-metric-learning's AccuracyCalculator, which a test checks them against.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score


def count_relevant(query_labels: np.ndarray, gallery_labels: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    """R for each query: how many gallery items share its class (not counting itself under leave-one-out).

    R sets the cut-off of R-precision and MAP@R; a query with R == 0 has nothing to retrieve.

    >>> count_relevant(np.array([0, 1, 2]), np.array([0, 0, 1]))
    array([2, 1, 0])
    >>> count_relevant(np.array([0, 0, 1]), np.array([0, 0, 1]), leave_one_out=True)
    array([1, 1, 0])
    """
    if gallery_labels.size == 0:
        return np.zeros(len(query_labels), dtype=np.int64)
    classes, counts = np.unique(gallery_labels, return_counts=True)
    position = np.minimum(np.searchsorted(classes, query_labels), len(classes) - 1)
    found = classes[position] == query_labels
    return np.where(found, counts[position] - int(leave_one_out), 0)


def precision_at_1(hits: np.ndarray) -> np.ndarray:
    """1 where the nearest neighbour has the query's class: the accuracy of a 1-NN classifier.

    >>> precision_at_1(np.array([[True, False], [False, True]]))
    array([1., 0.])
    """
    return hits[:, 0].astype(np.float64)


def recall_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 where any of the k nearest neighbours has the query's class (Recall@k of Song et al. 2016).

    >>> recall_at_k(np.array([[False, True, False], [False, False, True]]), 2)
    array([1., 0.])
    """
    if k > hits.shape[1]:
        raise ValueError(f"recall@{k} needs at least {k} neighbours per query, got {hits.shape[1]}")
    return np.asarray(hits[:, :k].any(axis=1), dtype=np.float64)


def _first_r(hits: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Mask of the first R columns of each row; R may not exceed the neighbours searched."""
    if relevant.size and relevant.max() > hits.shape[1]:
        raise ValueError(f"a query has R={relevant.max()} relevant items but only {hits.shape[1]} neighbours")
    return np.arange(hits.shape[1])[None, :] < relevant[:, None]


def r_precision(hits: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Fraction of the R nearest neighbours that share the query's class; NaN where R == 0.

    >>> r_precision(np.array([[True, False, True], [True, True, False]]), np.array([2, 3]))
    array([0.5       , 0.66666667])
    """
    correct = (hits & _first_r(hits, relevant)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(relevant > 0, correct / relevant, np.nan)


def average_precision_at_r(hits: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP@R: precision at each correct rank within the first R, summed and divided by R; NaN where R == 0.

    Unlike R-precision it rewards putting the correct neighbours first.

    >>> average_precision_at_r(np.array([[True, False, True], [False, True, True]]), np.array([2, 2]))
    array([0.5 , 0.25])
    """
    within = hits & _first_r(hits, relevant)
    ranks = np.arange(1, hits.shape[1] + 1)
    precision_at_rank = np.cumsum(within, axis=1) / ranks
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(relevant > 0, (precision_at_rank * within).sum(axis=1) / relevant, np.nan)


def vote_majority(neighbor_labels: np.ndarray) -> np.ndarray:
    """Majority class among each row's neighbours; a tie goes to the tied class ranked nearest.

    Breaking ties by rank (not by class id, as scikit-learn's KNeighborsClassifier does) keeps the
    prediction independent of how classes happen to be numbered.

    >>> vote_majority(np.array([[3, 1, 1], [2, 5, 5], [4, 7, 7], [6, 9, 8]]))
    array([1, 5, 7, 6])
    >>> vote_majority(np.array([[2, 5, 5, 2]]))
    array([2])
    """
    count = (neighbor_labels[:, :, None] == neighbor_labels[:, None, :]).sum(axis=2)
    best = count == count.max(axis=1, keepdims=True)
    return neighbor_labels[np.arange(len(neighbor_labels)), best.argmax(axis=1)]


def knn_accuracy(neighbor_labels: np.ndarray, query_labels: np.ndarray, k: int) -> np.ndarray:
    """1 where the majority vote of the k nearest neighbours is the query's class (seed 001's kNN classifier).

    >>> knn_accuracy(np.array([[0, 1, 1], [0, 0, 2]]), np.array([1, 2]), k=3)
    array([1., 0.])
    """
    if k > neighbor_labels.shape[1]:
        raise ValueError(f"kNN with k={k} needs at least {k} neighbours per query, got {neighbor_labels.shape[1]}")
    return (vote_majority(neighbor_labels[:, :k]) == query_labels).astype(np.float64)


def average_per_class(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, mean value, number of values) per class, ignoring NaN (queries the metric does not apply to).

    >>> average_per_class(np.array([1.0, 0.0, 1.0, np.nan]), np.array([0, 0, 1, 2]))
    (array([0, 1, 2]), array([0.5, 1. , nan]), array([2, 1, 0]))
    """
    classes, inverse = np.unique(labels, return_inverse=True)
    valid = ~np.isnan(values)
    counts = np.bincount(inverse[valid], minlength=len(classes))
    sums = np.bincount(inverse[valid], weights=values[valid], minlength=len(classes))
    with np.errstate(invalid="ignore", divide="ignore"):
        return classes, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts


def average_micro(values: np.ndarray) -> float:
    """Mean over queries, ignoring NaN: large classes weigh more. NaN when no query counts.

    >>> average_micro(np.array([1.0, 0.0, 1.0, np.nan]))
    0.6666666666666666
    """
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else float("nan")


def average_macro(values: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the per-class means, ignoring NaN: every class weighs the same, however many images it has.

    >>> average_macro(np.array([1.0, 0.0, 1.0, np.nan]), np.array([0, 0, 1, 2]))
    0.75
    """
    _, means, counts = average_per_class(values, labels)
    return float(means[counts > 0].mean()) if (counts > 0).any() else float("nan")


def score_clustering(labels: np.ndarray, cluster_ids: np.ndarray) -> dict[str, float]:
    """NMI and AMI between true classes and cluster assignments (AMI corrects NMI for chance agreement).

    >>> score_clustering(np.array([0, 0, 1, 1]), np.array([5, 5, 3, 3]))
    {'nmi': 1.0, 'ami': 1.0}
    """
    return {
        "nmi": float(normalized_mutual_info_score(labels, cluster_ids)),
        "ami": float(adjusted_mutual_info_score(labels, cluster_ids)),
    }
