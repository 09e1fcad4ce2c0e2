"""Clustering metrics against values worked out by hand on six images.

Classes a = {0, 1, 2}, b = {3, 4}, c = {5}; clusters 1 = {0, 1}, 2 = {2, 3, 4}, and image 5 in cluster 0,
which counts as a singleton.

- Pairs: same-class pairs 3 + 1 = 4; same-cluster pairs 1 + 3 = 4; both: (0, 1) and (3, 4), so P = R = 2/4.
- BCubed precision per image: 1, 1, 1/3, 2/3, 2/3, 1 (mean 7/9); recall: 2/3, 2/3, 1/3, 1, 1, 1 (mean 7/9).
- NMI (arithmetic mean): MI = (2/3) ln 2 + (1/6) ln(2/3) + (1/6) ln 6;
  both entropies (1/2) ln 2 + (1/3) ln 3 + (1/6) ln 6.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from replearn.clustering.metrics import bcubed_scores, clustering_scores, pairwise_scores

TRUE = ["a", "a", "a", "b", "b", "c"]
CLUSTERS = np.array([1, 1, 2, 2, 2, 0])


def test_six_images_by_hand() -> None:
    scores = clustering_scores(TRUE, CLUSTERS)
    assert scores["pairwise_precision"] == pytest.approx(0.5)
    assert scores["pairwise_recall"] == pytest.approx(0.5)
    assert scores["pairwise_f1"] == pytest.approx(0.5)
    assert scores["bcubed_precision"] == pytest.approx(7 / 9)
    assert scores["bcubed_recall"] == pytest.approx(7 / 9)
    assert scores["bcubed_f1"] == pytest.approx(7 / 9)
    mutual = 2 / 3 * math.log(2) + math.log(2 / 3) / 6 + math.log(6) / 6
    entropy = math.log(2) / 2 + math.log(3) / 3 + math.log(6) / 6
    assert scores["nmi"] == pytest.approx(mutual / entropy)
    assert scores["unclustered_fraction"] == pytest.approx(1 / 6)
    assert (scores["clusters"], scores["classes"]) == (2, 3)
    assert isinstance(scores["clusters"], int) and isinstance(scores["classes"], int)


def test_cluster_zero_is_singletons_not_one_cluster() -> None:
    everything_unclustered = clustering_scores(TRUE, np.zeros(6, dtype=np.int64))
    assert everything_unclustered["pairwise_precision"] == 1.0  # nothing claimed, nothing wrong
    assert everything_unclustered["pairwise_recall"] == 0.0
    assert everything_unclustered["clusters"] == 0


def test_one_big_cluster() -> None:
    # Every pair linked: precision 4 / 15; recall 1. BCubed precision: (3 * 3/6 + 2 * 2/6 + 1/6) / 6.
    assert pairwise_scores(TRUE, np.ones(6))["pairwise_precision"] == pytest.approx(4 / 15)
    assert bcubed_scores(TRUE, np.ones(6))["bcubed_precision"] == pytest.approx((1.5 + 4 / 6 + 1 / 6) / 6)
