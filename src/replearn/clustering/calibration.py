"""The cluster stage's threshold and Louvain resolution, calibrated together on the val split.

`calibrate_clusters` is what the evaluate stage hands to `evaluation.evaluate` (stages/evaluate.py):
evaluation sits below clustering in the layers, so it takes the calibration as a function instead of
importing the cluster stage's methods.

The cluster stage's default method (clustering/methods.py) prunes the kNN graph at a threshold and
splits it into Louvain communities; how finely depends on the resolution per connected component,
rho. Both are chosen here, on the same labelled val images as the pair threshold, as the pair of
CLUSTER_THRESHOLD_STEPS below the pair threshold and RESOLUTIONS whose clusters score the best
pairwise F1 against the classes, and checked on the test split.

The pair threshold (the best F1 over pairs, threshold.py) is the right one to call two images the
same, but Louvain can only split what the graph links, never join what it keeps apart: with the chars
model, linking down to 0.075 below the pair threshold raised the F1 of a 40-per-class inbox of a
held-out family from 0.938 to 0.954 and of the test subsets from 0.960 / 0.901 to 0.965 / 0.971.

An inbox may hold all the classes or a few of them, so the F1 that decides is the mean over the val
images and over seeded random subsets of their classes (a half, a fifth, a twentieth; ten draws
each). Of the choices within TOLERANCE of the best, the highest threshold wins (the fewest links,
the nearest to the pair threshold), then the lowest resolution. On the chars demo's val split the
full set alone could not tell rho 0.4 from 0.5 (F1 0.905 both), while 0.5 split a single held-out
class in two.

Wide data (thousands of classes, 3 to 7 images each) leaves 1 or 2 val images a class, and no
cluster of min_size among them, so the choice was too strict (41% of the wide benchmark's unseen
images unclustered). There the split holds a quarter of the unseen classes whole in val
(data/splits.py), and the thin val images of the others are the impostors: F 0.640 -> 0.663, 24%
unclustered, with the same model. Scoring at min_size 2 instead, which a class of two val images
can reach alone, chose a worse cut (0.666 against 0.725, both clustered at 2, as the stage
clusters a model of wide data: clustering/cluster.py, with_model_settings).

What the val split cannot do is calibrate with no evidence: with fewer than MIN_POSITIVE_PAIRS
same-class pairs among the val images, or when no candidate puts any two images of a class in one
cluster (every one scores 0, and the tie would silently go to the pair threshold), the calibration
refuses, says so, and keeps the pair threshold and DEFAULT_RESOLUTION.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from replearn.clustering.components import UNCLUSTERED, neighbours_for, number_by_size
from replearn.clustering.graph import knn_graph
from replearn.clustering.methods import cluster_embeddings, communities_of
from replearn.clustering.metrics import pairwise_scores, singleton_unclustered
from replearn.config import DEFAULT_RESOLUTION, ClusterConfig
from replearn.evaluation.evaluate import ClusterCalibration
from replearn.similarity import as_rows

RESOLUTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0)
CLUSTER_THRESHOLD_STEPS = (0.0, 0.025, 0.05, 0.075, 0.1)  # below the pair threshold
MIN_POSITIVE_PAIRS = 10  # same-class pairs of calibration images, below which nothing is calibrated
CLASS_FRACTIONS = (0.5, 0.2, 0.05)
DRAWS = 10
# Scores within this of the best count as tied, and ties go to the lower resolution (fewer splits):
# the val split is small, and differences below it came and went with the draws.
TOLERANCE = 0.005
REPORTED = ("pairwise_precision", "pairwise_recall", "pairwise_f1", "unclustered_fraction")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusteringChoice:
    """The chosen threshold and resolution, the val scores they gave, and the mean F1 over class subsets."""

    threshold: float
    resolution: float
    scores: dict[str, float]
    subsets_f1: float


def louvain_config(config: ClusterConfig, resolution: float) -> ClusterConfig:
    return config.model_copy(update={"method": "louvain", "resolution": resolution})


def clustering_quality(
    embeddings: np.ndarray, labels: np.ndarray, threshold: float, config: ClusterConfig
) -> dict[str, float]:
    """Pairwise precision, recall, F1 and the fraction unclustered of the stage's clusters against the classes."""
    return reported_scores(labels, cluster_embeddings(embeddings, threshold, config))


def reported_scores(labels: np.ndarray, cluster_ids: np.ndarray) -> dict[str, float]:
    """The REPORTED scores of cluster ids against the classes, as clustering_scores gives them.

    Only these, since calibration scores thousands of candidates and NMI and ARI were most of its time.

    >>> reported_scores(np.array([0, 0, 1, 1]), np.array([1, 1, 2, 0]))["unclustered_fraction"]
    0.25
    """
    scores = pairwise_scores(labels, singleton_unclustered(cluster_ids))
    scores["unclustered_fraction"] = float(np.mean(np.asarray(cluster_ids) == UNCLUSTERED))
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


def choose_clustering(
    embeddings: np.ndarray, labels: np.ndarray, pair_threshold: float, config: ClusterConfig
) -> ClusteringChoice | None:
    """The best (threshold, resolution) by pairwise F1 averaged over class subsets; ties to the higher threshold.

    The thresholds are CLUSTER_THRESHOLD_STEPS below the pair threshold; within one, ties go to the
    lower resolution. Here two points of a class are 0.935 similar (median), so the pair threshold
    0.95 leaves most of them apart, and 0.9 is the highest that clusters every class whole:

    >>> rng = np.random.default_rng(0)
    >>> centres = np.eye(8)[np.repeat(np.arange(8), 5)]
    >>> points = centres + 0.1 * rng.normal(size=centres.shape)
    >>> points /= np.linalg.norm(points, axis=1, keepdims=True)
    >>> choice = choose_clustering(points, np.repeat(np.arange(8), 5), 0.95, ClusterConfig(neighbors=4))
    >>> choice.threshold, choice.resolution, choice.subsets_f1
    (0.9, 0.05, 1.0)

    None when the images cannot decide: fewer than MIN_POSITIVE_PAIRS same-class pairs, or no
    candidate that clusters any two images of a class together (two images a class, min_size 3):

    >>> pairs = np.repeat(np.arange(20), 2)
    >>> choose_clustering(np.eye(20)[pairs], pairs, 0.9, ClusterConfig(neighbors=3)) is None
    True
    """
    labels = np.asarray(labels)
    counts = np.unique(labels, return_counts=True)[1]
    if int((counts * (counts - 1) // 2).sum()) < MIN_POSITIVE_PAIRS:
        return None
    thresholds = [round(pair_threshold - step, 6) for step in CLUSTER_THRESHOLD_STEPS]
    candidates = [(threshold, resolution) for threshold in thresholds for resolution in RESOLUTIONS]
    scores: dict[tuple[float, float], list[dict[str, float]]] = {candidate: [] for candidate in candidates}
    for mask in class_subsets(labels, config.seed):
        # One kNN search per subset; each threshold prunes it, each resolution splits the pruned graph.
        neighbours = neighbours_for(as_rows(embeddings[mask]), config)
        for threshold in thresholds:
            graph = knn_graph(neighbours, threshold, mutual=False)
            for resolution in RESOLUTIONS:
                groups = communities_of(graph, louvain_config(config, resolution))
                ids = number_by_size(groups, config.min_size)
                scores[threshold, resolution].append(reported_scores(labels[mask], ids))
    choices = [
        ClusteringChoice(t, r, scores[t, r][0], float(np.mean([s["pairwise_f1"] for s in scores[t, r]])))
        for t, r in candidates
    ]
    if max(choice.scores["pairwise_f1"] for choice in choices) <= 0.0:  # on every image: nothing ever joined
        return None
    best = max(choice.subsets_f1 for choice in choices)
    return next(choice for choice in choices if choice.subsets_f1 >= best - TOLERANCE)


def calibrate_clusters(
    embeddings: np.ndarray,
    labels: np.ndarray,
    pair_threshold: float,
    config: ClusterConfig,
    split: str,
    test_sets: dict[str, tuple[np.ndarray, np.ndarray]],
) -> ClusterCalibration:
    """Choose the threshold and resolution on the `split` images, then cluster each test set with them.

    Metrics: `cluster/threshold`, `cluster/resolution`, `cluster/calibrated` (0 when refused), the chosen scores
    under `cluster/<split>/` and the mean F1 over class subsets, and each test set's scores under
    `<subset>/clusters/`. When the images cannot calibrate (choose_clustering gives None), a warning says
    so and the pair threshold and DEFAULT_RESOLUTION stand.
    """
    choice = choose_clustering(embeddings, labels, pair_threshold, config)
    if choice is None:
        log.warning(
            "the %s split cannot calibrate the cluster threshold and resolution: it has fewer than %d same-class "
            "pairs, or no candidate clusters two images of a class together (cluster.min_size=%d); "
            "clustering uses the pair threshold %.4f and resolution %g; add val images "
            "(preprocess.split.val_fraction) to calibrate them",
            split,
            MIN_POSITIVE_PAIRS,
            config.min_size,
            pair_threshold,
            DEFAULT_RESOLUTION,
        )
        threshold, resolution, f1 = pair_threshold, DEFAULT_RESOLUTION, None
        metrics: dict[str, float] = {
            "cluster/threshold": threshold,
            "cluster/resolution": resolution,
            "cluster/calibrated": 0.0,
        }
    else:
        threshold, resolution, f1 = choice.threshold, choice.resolution, choice.scores["pairwise_f1"]
        metrics = {
            "cluster/threshold": threshold,
            "cluster/resolution": resolution,
            "cluster/calibrated": 1.0,
            f"cluster/{split}_class_subsets/pairwise_f1": choice.subsets_f1,
        }
        metrics |= {f"cluster/{split}/{key}": value for key, value in choice.scores.items()}
    calibrated = louvain_config(config, resolution)
    for subset, (test_embeddings, test_labels) in test_sets.items():
        quality = clustering_quality(test_embeddings, test_labels, threshold, calibrated)
        metrics |= {f"{subset}/clusters/{key}": value for key, value in quality.items()}
    return ClusterCalibration(threshold, resolution, f1, metrics)
