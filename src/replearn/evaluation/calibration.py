"""The similarity threshold for clustering: pairwise precision, recall and F1 of "cos >= t means same class".

Clustering links two images when their cosine similarity reaches a threshold, so the threshold is
chosen on labelled validation images the same way: every pair is a prediction (linked or not) with a
known answer (same class or not). N images make N(N-1)/2 pairs, far too many to hold for large N, so
the pairs are counted into fine similarity bins block by block; the counts at or above each bin edge
give true and false positives for every candidate threshold at once, exactly at the bin edges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from replearn.similarity import checked_unit_rows, rows_per_block

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairCurve:
    """Pair counts per similarity bin; bin i holds similarities in [edges[i], edges[i + 1])."""

    edges: np.ndarray  # (bins + 1,) from -1 to 1
    positive_counts: np.ndarray  # (bins,) same-class pairs per bin
    negative_counts: np.ndarray  # (bins,) different-class pairs per bin

    @property
    def thresholds(self) -> np.ndarray:
        """The candidate thresholds: the lower edge of every bin."""
        return self.edges[:-1]

    @property
    def true_positives(self) -> np.ndarray:
        """Same-class pairs with similarity >= each threshold."""
        return np.cumsum(self.positive_counts[::-1])[::-1]

    @property
    def false_positives(self) -> np.ndarray:
        """Different-class pairs with similarity >= each threshold."""
        return np.cumsum(self.negative_counts[::-1])[::-1]

    @property
    def precision(self) -> np.ndarray:
        """Precision per threshold; 1 where no pair is linked (nothing claimed, nothing wrong)."""
        linked = self.true_positives + self.false_positives
        return np.where(linked > 0, self.true_positives / np.maximum(linked, 1), 1.0)

    @property
    def recall(self) -> np.ndarray:
        total = int(self.positive_counts.sum())
        return self.true_positives / total if total else np.zeros(len(self.thresholds))

    @property
    def f1(self) -> np.ndarray:
        precision, recall = self.precision, self.recall
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold and the pairwise scores it gives on the calibration data."""

    threshold: float
    precision: float
    recall: float
    f1: float


def _bin_indices(similarities: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each similarity, exact at the edges: a fast uniform guess, then a one-step correction."""
    bins = len(edges) - 1
    guess = np.clip(((similarities.astype(np.float64) + 1.0) * (bins / 2.0)).astype(np.int64), 0, bins - 1)
    guess -= similarities < edges[guess]
    guess += (similarities >= edges[np.minimum(guess + 1, bins)]) & (guess < bins - 1)
    return np.clip(guess, 0, bins - 1)


def count_pairs(embeddings: np.ndarray, labels: np.ndarray, bins: int, memory_mb: float) -> PairCurve:
    """Count every unordered pair (i < j) by similarity bin, separately for same-class and different-class pairs.

    Rows are processed in blocks against the rows after them, so memory is a few block-sized matrices.

    >>> unit = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    >>> curve = count_pairs(unit, np.array([0, 0, 1]), bins=4, memory_mb=1)
    >>> curve.positive_counts.tolist(), curve.negative_counts.tolist()
    ([0, 0, 0, 1], [0, 0, 1, 1])
    """
    data = checked_unit_rows(embeddings)
    labels = np.asarray(labels)
    edges = np.linspace(-1.0, 1.0, bins + 1).astype(np.float32)
    positive = np.zeros(bins, np.int64)
    negative = np.zeros(bins, np.int64)
    # A block of rows holds similarities, labels-equal mask, bin indices and temporaries: about 32 bytes a pair.
    step = rows_per_block(32 * len(data), memory_mb)
    for start in range(0, len(data), step):
        stop = min(start + step, len(data))
        similarities = data[start:stop] @ data[start:].T
        upper = np.arange(start, len(data))[None, :] > np.arange(start, stop)[:, None]
        same = labels[start:stop, None] == labels[None, start:]
        indices = _bin_indices(similarities, edges)
        positive += np.bincount(indices[upper & same], minlength=bins)
        negative += np.bincount(indices[upper & ~same], minlength=bins)
    return PairCurve(edges, positive, negative)


def score_threshold(curve: PairCurve, threshold: float) -> ThresholdChoice:
    """Pairwise scores of a given threshold, read at the first bin edge at or above it.

    >>> curve = PairCurve(np.array([-1.0, 0.0, 1.0]), np.array([0, 3]), np.array([2, 1]))
    >>> score_threshold(curve, 0.0)
    ThresholdChoice(threshold=0.0, precision=0.75, recall=1.0, f1=0.8571428571428571)
    """
    position = min(int(np.searchsorted(curve.thresholds, threshold, side="left")), len(curve.thresholds) - 1)
    return ThresholdChoice(
        threshold=float(threshold),
        precision=float(curve.precision[position]),
        recall=float(curve.recall[position]),
        f1=float(curve.f1[position]),
    )


def choose_threshold(
    curve: PairCurve, objective: Literal["f1", "precision"] = "f1", target_precision: float = 0.95
) -> ThresholdChoice:
    """The threshold with the best F1, or the lowest (highest-recall) one that reaches `target_precision`.

    Several thresholds often tie for the best F1 (on separable data every threshold in the gap between
    the classes scores 1.0); the middle of the first run of tied thresholds is taken, which leaves the
    widest margin on both sides. When no threshold reaches the target precision, the most precise one is taken and a
    warning says so.

    >>> curve = PairCurve(np.linspace(-1, 1, 5), np.array([0, 0, 0, 4]), np.array([3, 5, 0, 0]))
    >>> choose_threshold(curve).threshold
    0.25
    """
    if curve.positive_counts.sum() == 0:
        raise ValueError("no same-class pairs to calibrate on: every class has a single image")
    thresholds = curve.thresholds
    if objective == "f1":
        f1 = curve.f1
        tied = np.flatnonzero(f1 >= f1.max() - 1e-12)
        run_end = tied[np.flatnonzero(np.diff(tied) > 1)[0]] if (np.diff(tied) > 1).any() else tied[-1]
        threshold = (thresholds[tied[0]] + thresholds[run_end]) / 2.0
    else:
        precision = curve.precision
        reaching = np.flatnonzero((precision >= target_precision) & (curve.true_positives > 0))
        if reaching.size:
            threshold = thresholds[reaching[0]]
        else:
            best = np.flatnonzero(precision >= precision[curve.true_positives > 0].max())
            threshold = thresholds[best[0]]
            log.warning(
                "no threshold reaches precision %.3f on the calibration pairs; using %.4f (precision %.3f)",
                target_precision,
                threshold,
                precision[best[0]],
            )
    return score_threshold(curve, float(threshold))
