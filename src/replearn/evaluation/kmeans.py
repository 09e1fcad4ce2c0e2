"""k-means cluster ids of the test embeddings, which NMI and AMI compare with the true classes."""

from __future__ import annotations

import numpy as np

from replearn.similarity import checked_unit_rows


def cluster_kmeans(embeddings: np.ndarray, n_clusters: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """k-means cluster id per row (faiss, spherical since rows are unit vectors), as used for NMI/AMI.

    20 iterations is what pytorch-metric-learning's AccuracyCalculator runs.

    >>> points = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.14, 0.99]])
    >>> ids = cluster_kmeans(points / np.linalg.norm(points, axis=1, keepdims=True), 2)
    >>> bool(ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2])
    True
    """
    import faiss

    data = checked_unit_rows(embeddings)
    if n_clusters >= len(data):
        return np.arange(len(data))
    kmeans = faiss.Kmeans(
        data.shape[1], n_clusters, niter=iterations, seed=seed, spherical=True, min_points_per_centroid=1
    )
    kmeans.train(data)
    return kmeans.index.search(data, 1)[1].ravel()
