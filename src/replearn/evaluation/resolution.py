"""Louvain's resolution for the cluster stage, calibrated on the val split the way the threshold is.

The cluster stage's default method (clustering/methods.py) splits the threshold graph into Louvain
communities; how finely depends on the resolution. It is chosen here, on the same labelled val
images as the threshold and with that threshold, as the value of RESOLUTIONS whose clusters score
the best pairwise F1 against the classes (ties to the lower value), and checked on the test split.
The number of val images travels with it: modularity's resolution is relative to the graph's size
(clustering/methods.py: effective_resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from replearn.clustering.methods import cluster_embeddings
from replearn.clustering.metrics import clustering_scores
from replearn.config import ClusterConfig

RESOLUTIONS = (1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
REPORTED = ("pairwise_precision", "pairwise_recall", "pairwise_f1", "unclustered_fraction")


@dataclass(frozen=True)
class ResolutionChoice:
    """The chosen resolution, the number of images it was chosen on, and the val scores it gave."""

    resolution: float
    images: int
    scores: dict[str, float]


def louvain_config(config: ClusterConfig, resolution: float, images: int) -> ClusterConfig:
    return config.model_copy(update={"method": "louvain", "resolution": resolution, "resolution_images": images})


def clustering_quality(
    embeddings: np.ndarray, labels: np.ndarray, threshold: float, config: ClusterConfig
) -> dict[str, float]:
    """Pairwise precision, recall, F1 and the fraction unclustered of the stage's clusters against the classes."""
    scores = clustering_scores(labels, cluster_embeddings(embeddings, threshold, config))
    return {key: scores[key] for key in REPORTED}


def choose_resolution(
    embeddings: np.ndarray, labels: np.ndarray, threshold: float, config: ClusterConfig
) -> ResolutionChoice:
    """The resolution of RESOLUTIONS with the best pairwise F1 on these labelled images.

    >>> rng = np.random.default_rng(0)
    >>> centres = np.eye(8)[np.repeat(np.arange(8), 5)]
    >>> points = centres + 0.05 * rng.normal(size=centres.shape)
    >>> points /= np.linalg.norm(points, axis=1, keepdims=True)
    >>> choice = choose_resolution(points, np.repeat(np.arange(8), 5), 0.9, ClusterConfig(neighbors=4))
    >>> choice.resolution, choice.scores["pairwise_f1"], choice.images
    (1.0, 1.0, 40)
    """
    best: ResolutionChoice | None = None
    for resolution in RESOLUTIONS:
        scores = clustering_quality(embeddings, labels, threshold, louvain_config(config, resolution, len(embeddings)))
        if best is None or scores["pairwise_f1"] > best.scores["pairwise_f1"] + 1e-12:
            best = ResolutionChoice(resolution, len(embeddings), scores)
    assert best is not None
    return best
