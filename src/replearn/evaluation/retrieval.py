"""Per-query retrieval scores for one protocol, computed block by block from exact kNN.

The two protocols of the evaluation differ only in their arguments: queries against a separate
gallery (test images against train images, seed 002), or leave-one-out within one split (every
image queries all the others, the protocol of "A Metric Learning Reality Check"). Neighbours of one
block of queries are reduced to per-query numbers before the next block is searched, so memory
stays bounded however many queries there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from replearn.console import make_progress
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
)
from replearn.similarity import iterate_neighbors


@dataclass
class RetrievalScores:
    """Per-query values of every retrieval metric; NaN marks lone queries, whose class has no gallery item.

    Lone queries are left out of every average, as pytorch-metric-learning does: there is nothing
    they could retrieve, and counting them as failures would blame the model for the split.
    """

    query_labels: np.ndarray  # (n,) int class codes
    relevant: np.ndarray  # (n,) R: gallery items of the query's class
    values: dict[str, np.ndarray]  # metric name -> (n,) float64
    neighbors: np.ndarray  # (n, kept) gallery rows of the nearest neighbours, for the worst-queries grid
    similarities: np.ndarray  # (n, kept) their cosine similarities

    @property
    def lone(self) -> np.ndarray:
        return self.relevant == 0

    def summarise(self) -> dict[str, float]:
        """Micro averages under the metric's name, macro averages under `macro/<name>`."""
        summary: dict[str, float] = {}
        for name, values in self.values.items():
            summary[name] = average_micro(values)
            summary[f"macro/{name}"] = average_macro(values, self.query_labels)
        summary["queries"] = float(np.count_nonzero(~self.lone))
        summary["lone_queries"] = float(np.count_nonzero(self.lone))
        return summary

    def per_class(self) -> pd.DataFrame:
        """One row per query class: how many queries counted, their gallery size R, and each metric's mean."""
        classes, relevant, _ = average_per_class(self.relevant.astype(np.float64), self.query_labels)
        counted = average_per_class(self.values["precision_at_1"], self.query_labels)[2]
        table = pd.DataFrame({"class": classes, "queries": counted, "relevant": relevant.astype(np.int64)})
        for name, values in self.values.items():
            table[name] = average_per_class(values, self.query_labels)[1]
        return table


def score_retrieval(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    leave_one_out: bool,
    recall_at: list[int],
    knn_k: int,
    keep_neighbors: int,
    memory_mb: float,
    description: str = "kNN search",
) -> RetrievalScores:
    """Search each query's neighbours and score them: P@1, Recall@k, R-precision, MAP@R, kNN accuracy.

    Enough neighbours are searched for the largest class (R-precision and MAP@R look at the first R),
    capped by the gallery size; Recall@k and the kNN vote use what there is when the gallery is smaller
    than k.

    >>> unit = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    >>> scores = score_retrieval(unit, np.array([0, 0, 1, 1]), unit, np.array([0, 0, 1, 1]),
    ...                          leave_one_out=True, recall_at=[1], knn_k=1, keep_neighbors=1, memory_mb=1)
    >>> scores.values["precision_at_1"].tolist(), scores.summarise()["map_at_r"]
    ([1.0, 1.0, 1.0, 1.0], 1.0)
    """
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    relevant = count_relevant(query_labels, gallery_labels, leave_one_out)
    k = max([int(relevant.max(initial=0)), knn_k, keep_neighbors, *recall_at])
    names = ["precision_at_1", *(f"recall_at_{r}" for r in recall_at), "r_precision", "map_at_r", "knn_accuracy"]
    values = {name: np.full(len(queries), np.nan) for name in names}
    kept = max(0, min(keep_neighbors, len(gallery) - int(leave_one_out)))
    neighbors = np.zeros((len(queries), kept), np.int64)
    similarities = np.zeros((len(queries), kept), np.float32)
    with make_progress() as progress:
        task = progress.add_task(description, total=len(queries), unit="queries")
        for block in iterate_neighbors(queries, gallery, k, leave_one_out=leave_one_out, memory_mb=memory_mb):
            rows = slice(block.start, block.stop)
            labels = gallery_labels[block.indices]
            hits = labels == query_labels[rows, None]
            width = hits.shape[1]
            values["precision_at_1"][rows] = precision_at_1(hits)
            for r in recall_at:
                values[f"recall_at_{r}"][rows] = recall_at_k(hits, min(r, width))
            values["r_precision"][rows] = r_precision(hits, relevant[rows])
            values["map_at_r"][rows] = average_precision_at_r(hits, relevant[rows])
            values["knn_accuracy"][rows] = knn_accuracy(labels, query_labels[rows], min(knn_k, width))
            neighbors[rows] = block.indices[:, :kept]
            similarities[rows] = block.similarities[:, :kept]
            progress.advance(task, block.stop - block.start)
    lone = relevant == 0
    for array in values.values():
        array[lone] = np.nan
    return RetrievalScores(query_labels, relevant, values, neighbors, similarities)
