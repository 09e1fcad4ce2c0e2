"""How well cluster ids match known classes, for inboxes whose images sit in class folders.

Cluster 0 means "unclustered": it is not one big cluster, so every image in it counts as a
cluster of its own (it claims to belong with nobody). The fraction sent to 0 is reported on its
own, because a clustering can look precise simply by refusing to cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from replearn.clustering.components import UNCLUSTERED


def singleton_unclustered(cluster_ids: np.ndarray) -> np.ndarray:
    """Give every image in cluster 0 a fresh id of its own, so 0 never groups images together.

    >>> singleton_unclustered(np.array([1, 0, 0, 1])).tolist()
    [1, 2, 3, 1]
    """
    ids = np.asarray(cluster_ids, dtype=np.int64).copy()
    zero = ids == UNCLUSTERED
    ids[zero] = ids.max(initial=0) + 1 + np.arange(int(zero.sum()))
    return ids


def _contingency(labels_true: Sequence[str] | np.ndarray, labels_pred: np.ndarray) -> csr_matrix:
    _, true_index = np.unique(np.asarray(labels_true), return_inverse=True)
    _, pred_index = np.unique(labels_pred, return_inverse=True)
    ones = np.ones(len(true_index), dtype=np.int64)
    return coo_matrix((ones, (true_index, pred_index))).tocsr()


def _pairs(counts: np.ndarray) -> float:
    """Unordered pairs within groups of the given sizes: sum of n (n - 1) / 2."""
    counts = np.asarray(counts, dtype=np.float64)
    return float((counts * (counts - 1) / 2).sum())


def pairwise_scores(labels_true: Sequence[str] | np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 over pairs of images: a pair is positive when both share a cluster.

    Counted from the contingency table as learn-to-cluster does: true positives are the pairs inside
    each (class, cluster) cell, predicted pairs those inside each cluster, true pairs those inside each class.

    >>> pairwise_scores(["a", "a", "a", "b"], np.array([1, 1, 2, 2]))
    {'pairwise_precision': 0.5, 'pairwise_recall': 0.3333333333333333, 'pairwise_f1': 0.4}
    """
    table = _contingency(labels_true, labels_pred)
    true_positive = _pairs(table.data)
    predicted = _pairs(np.asarray(table.sum(axis=0)).ravel())
    actual = _pairs(np.asarray(table.sum(axis=1)).ravel())
    precision = true_positive / predicted if predicted else 1.0
    recall = true_positive / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"pairwise_precision": precision, "pairwise_recall": recall, "pairwise_f1": f1}


def bcubed_scores(labels_true: Sequence[str] | np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """BCubed precision/recall/F1 (Bagga & Baldwin): per image, the share of its cluster in its class and back.

    >>> round(bcubed_scores(["a", "a", "b"], np.array([1, 1, 1]))["bcubed_precision"], 4)
    0.5556
    """
    table = _contingency(labels_true, labels_pred)
    counts = table.data.astype(np.float64)
    class_sizes = np.asarray(table.sum(axis=1)).ravel()
    cluster_sizes = np.asarray(table.sum(axis=0)).ravel()
    rows, cols = table.nonzero()
    total = counts.sum()
    precision = float((counts**2 / cluster_sizes[cols]).sum() / total)
    recall = float((counts**2 / class_sizes[rows]).sum() / total)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"bcubed_precision": precision, "bcubed_recall": recall, "bcubed_f1": f1}


def clustering_scores(labels_true: Sequence[str] | np.ndarray, cluster_ids: np.ndarray) -> dict[str, float]:
    """Every labelled-evaluation metric of one clustering, with cluster 0 as singletons.

    >>> scores = clustering_scores(["a", "a", "b", "b"], np.array([1, 1, 2, 0]))
    >>> scores["pairwise_precision"], scores["unclustered_fraction"]
    (1.0, 0.25)
    """
    cluster_ids = np.asarray(cluster_ids)
    if len(cluster_ids) == 0:
        return {}
    predicted = singleton_unclustered(cluster_ids)
    true = np.asarray(labels_true)
    return {
        **pairwise_scores(true, predicted),
        **bcubed_scores(true, predicted),
        "nmi": float(normalized_mutual_info_score(true, predicted)),
        "ari": float(adjusted_rand_score(true, predicted)),
        "unclustered_fraction": float(np.mean(cluster_ids == UNCLUSTERED)),
        "clusters": int(len(np.unique(cluster_ids[cluster_ids != UNCLUSTERED]))),
        "classes": int(len(np.unique(true))),
    }
