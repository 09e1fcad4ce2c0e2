"""Louvain's resolution for the cluster stage, calibrated on the val split the way the threshold is.

The cluster stage's default method (clustering/methods.py) splits the threshold graph into Louvain
communities; how finely depends on the resolution per connected component, rho. It is chosen here,
on the same labelled val images as the threshold and with that threshold, as the value of
RESOLUTIONS whose clusters score the best pairwise F1 against the classes (ties to the lower
value), and checked on the test split.

An inbox may hold all the classes or a few of them, so the F1 that decides is the mean over the val
images and over seeded random subsets of their classes (a half, a fifth, a twentieth; ten draws
each), and the lowest resolution within TOLERANCE of the best wins. On the chars demo's val split
the full set alone could not tell rho 0.4 from 0.5 (F1 0.905 both), while 0.5 split a single
held-out class in two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from replearn.clustering.methods import cluster_embeddings
from replearn.clustering.metrics import clustering_scores
from replearn.config import ClusterConfig

RESOLUTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0)
CLASS_FRACTIONS = (0.5, 0.2, 0.05)
DRAWS = 10
# Scores within this of the best count as tied, and ties go to the lower resolution (fewer splits):
# the val split is small, and differences below it came and went with the draws.
TOLERANCE = 0.005
REPORTED = ("pairwise_precision", "pairwise_recall", "pairwise_f1", "unclustered_fraction")


@dataclass(frozen=True)
class ResolutionChoice:
    """The chosen resolution, the val scores it gave, and the mean F1 over class subsets that chose it."""

    resolution: float
    scores: dict[str, float]
    subsets_f1: float


def louvain_config(config: ClusterConfig, resolution: float) -> ClusterConfig:
    return config.model_copy(update={"method": "louvain", "resolution": resolution})


def clustering_quality(
    embeddings: np.ndarray, labels: np.ndarray, threshold: float, config: ClusterConfig
) -> dict[str, float]:
    """Pairwise precision, recall, F1 and the fraction unclustered of the stage's clusters against the classes."""
    scores = clustering_scores(labels, cluster_embeddings(embeddings, threshold, config))
    return {key: scores[key] for key in REPORTED}


def class_subsets(labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Masks: every image, then DRAWS seeded draws of each CLASS_FRACTIONS share of the classes (at least one).

    >>> [int(mask.sum()) for mask in class_subsets(np.repeat(np.arange(10), 2), seed=0)][::10]
    [20, 10, 4, 2]
    """
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    masks = [np.ones(len(labels), dtype=bool)]
    for fraction in CLASS_FRACTIONS:
        for _ in range(DRAWS):
            chosen = rng.choice(classes, max(1, round(fraction * len(classes))), replace=False)
            masks.append(np.isin(labels, chosen))
    return masks


def choose_resolution(
    embeddings: np.ndarray, labels: np.ndarray, threshold: float, config: ClusterConfig
) -> ResolutionChoice:
    """The lowest resolution of RESOLUTIONS within TOLERANCE of the best pairwise F1, averaged over class subsets.

    >>> rng = np.random.default_rng(0)
    >>> centres = np.eye(8)[np.repeat(np.arange(8), 5)]
    >>> points = centres + 0.05 * rng.normal(size=centres.shape)
    >>> points /= np.linalg.norm(points, axis=1, keepdims=True)
    >>> choice = choose_resolution(points, np.repeat(np.arange(8), 5), 0.9, ClusterConfig(neighbors=4))
    >>> choice.resolution, choice.scores["pairwise_f1"], choice.subsets_f1
    (0.05, 1.0, 1.0)
    """
    labels = np.asarray(labels)
    subsets = class_subsets(labels, config.seed)
    choices = []
    for resolution in RESOLUTIONS:
        louvain = louvain_config(config, resolution)
        scores = [clustering_quality(embeddings[mask], labels[mask], threshold, louvain) for mask in subsets]
        choices.append(ResolutionChoice(resolution, scores[0], float(np.mean([s["pairwise_f1"] for s in scores]))))
    best = max(choice.subsets_f1 for choice in choices)
    return next(choice for choice in choices if choice.subsets_f1 >= best - TOLERANCE)
