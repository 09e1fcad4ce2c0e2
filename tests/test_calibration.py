"""Threshold calibration: exact pair counts in blocks, and a threshold between the clusters on separable data."""

from __future__ import annotations

import numpy as np
import pytest

from replearn.evaluation.calibration import PairCurve, choose_threshold, count_pairs, score_threshold


def unit(points: np.ndarray) -> np.ndarray:
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def separable(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight clusters on orthogonal axes: same-class cosine > 0.9, different-class cosine < 0.3."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 10)
    return unit(np.eye(6)[labels] + rng.normal(scale=0.05, size=(30, 6))), labels


def test_pair_counts_match_brute_force_for_any_block_size() -> None:
    rng = np.random.default_rng(1)
    embeddings, labels = unit(rng.normal(size=(60, 8))), rng.integers(0, 4, size=60)
    similarities = embeddings @ embeddings.T
    upper = np.triu(np.ones((60, 60), dtype=bool), k=1)
    same = labels[:, None] == labels[None, :]
    small = count_pairs(embeddings, labels, bins=200, memory_mb=0.001)
    large = count_pairs(embeddings, labels, bins=200, memory_mb=64)
    np.testing.assert_array_equal(small.positive_counts, large.positive_counts)
    np.testing.assert_array_equal(small.negative_counts, large.negative_counts)
    assert small.positive_counts.sum() + small.negative_counts.sum() == 60 * 59 // 2
    for index in (0, 50, 100, 137, 199):
        threshold = small.thresholds[index]
        linked = upper & (similarities >= threshold)
        assert small.true_positives[index] == (linked & same).sum()
        assert small.false_positives[index] == (linked & ~same).sum()


def test_max_f1_threshold_lies_between_the_clusters() -> None:
    embeddings, labels = separable()
    similarities = embeddings @ embeddings.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    highest_negative = similarities[labels[:, None] != labels[None, :]].max()
    lowest_positive = similarities[same].min()
    choice = choose_threshold(count_pairs(embeddings, labels, bins=2000, memory_mb=1), "f1", 0.95)
    assert highest_negative < choice.threshold <= lowest_positive
    assert (choice.precision, choice.recall, choice.f1) == (1.0, 1.0, 1.0)
    # The middle of the gap, not one of its ends (bin edges are 0.001 apart).
    assert choice.threshold == pytest.approx((highest_negative + lowest_positive) / 2, abs=2e-3)


def test_target_precision_takes_the_highest_recall_threshold_that_reaches_it() -> None:
    # Bins over [-1, 1) in steps of 0.5; negatives spread over the upper bins too.
    curve = PairCurve(np.linspace(-1, 1, 5), np.array([0, 0, 2, 8]), np.array([4, 4, 1, 1]))
    assert curve.precision.tolist() == pytest.approx([10 / 20, 10 / 16, 10 / 12, 8 / 9])
    choice = choose_threshold(curve, "precision", target_precision=0.8)
    assert choice.threshold == 0.0
    assert (choice.precision, choice.recall) == pytest.approx((10 / 12, 1.0))
    unreachable = choose_threshold(curve, "precision", target_precision=0.99)
    assert unreachable.threshold == 0.5 and unreachable.precision == pytest.approx(8 / 9)


def test_scores_at_a_given_threshold() -> None:
    embeddings, labels = separable()
    curve = count_pairs(embeddings, labels, bins=2000, memory_mb=1)
    everything = score_threshold(curve, -1.0)
    assert everything.recall == 1.0
    assert everything.precision == pytest.approx(3 * 45 / (30 * 29 / 2))
    assert score_threshold(curve, 0.9999).recall < 1.0


def test_single_image_classes_cannot_be_calibrated() -> None:
    curve = count_pairs(unit(np.eye(3)), np.arange(3), bins=10, memory_mb=1)
    with pytest.raises(ValueError, match="single image"):
        choose_threshold(curve)


def thin_val(classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Many classes with two images each, a few with one: the val split of a wide dataset."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.repeat(np.arange(classes), 2), np.arange(classes, classes + 5)])
    centres = rng.normal(size=(classes + 5, 32))
    return unit(centres[labels] + rng.normal(scale=0.35, size=(len(labels), 32))), labels


def test_one_or_two_val_images_a_class_give_a_threshold_or_a_refusal_never_a_silent_tie(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """20 positive pairs place the pair threshold; clusters of min_size 3 get no evidence, so calibration refuses."""
    from replearn.clustering.calibration import calibrate_clusters, choose_clustering
    from replearn.config import DEFAULT_RESOLUTION, ClusterConfig

    embeddings, labels = thin_val(20)
    curve = count_pairs(embeddings, labels, bins=400, memory_mb=1)
    pair = choose_threshold(curve)
    lowest_positive = curve.thresholds[np.flatnonzero(curve.positive_counts)[0]]
    assert pair.f1 > 0.9 and -0.5 < pair.threshold <= lowest_positive
    # min_size 2: two images of a class can form a cluster, so the choice is real.
    choice = choose_clustering(embeddings, labels, pair.threshold, ClusterConfig(neighbors=5, min_size=2))
    assert choice is not None and choice.subsets_f1 > 0.8 and choice.threshold <= pair.threshold + 1e-6
    # min_size 3: every candidate scores 0; instead of the tie's pair threshold in silence, a refusal that says so.
    config = ClusterConfig(neighbors=5)
    assert choose_clustering(embeddings, labels, pair.threshold, config) is None
    calibration = calibrate_clusters(embeddings, labels, pair.threshold, config, "val", {"seen": (embeddings, labels)})
    assert (calibration.threshold, calibration.resolution, calibration.f1) == (pair.threshold, DEFAULT_RESOLUTION, None)
    assert calibration.metrics["cluster/calibrated"] == 0.0 and "seen/clusters/pairwise_f1" in calibration.metrics
    assert "cannot calibrate" in caplog.text and "val_fraction" in caplog.text


def test_too_few_classes_with_two_images_refuse() -> None:
    from replearn.clustering.calibration import choose_clustering
    from replearn.config import ClusterConfig

    embeddings, labels = thin_val(6)
    assert choose_clustering(embeddings, labels, 0.8, ClusterConfig(neighbors=5, min_size=2)) is None
