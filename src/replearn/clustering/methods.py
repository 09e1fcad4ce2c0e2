"""The clustering methods of the cluster stage (cluster.method), one call for both.

- "louvain" (the default): the kNN graph of the images, keeping only pairs at or above the
  calibrated threshold and weighted by their similarity, split into communities by Louvain
  modularity optimisation (scikit-network, BSD) at a resolution calibrated on the validation split
  in `evaluate`; a community that is not connected in the graph is split into its connected parts.
  Threshold components chain: one image close to two classes joins them, and at 40 images a class
  the seed's rule put 62 classes into 42 clusters. Louvain cuts such a component where the links
  between its parts are fewer than modularity expects, and because the graph is pruned at the
  threshold it can only split components, never join them: on data it does not fit it falls back
  towards the components. scikit-network's Leiden scores the same on the benchmark, but its
  refinement draws from C's unseeded rand(), so its clusters change from run to run; Louvain's do not.
- "components": connected components of the threshold graph, the seed's rule (components.py).

Modularity's resolution is relative to the graph: at resolution r, communities hold at most about
N / r images, so a fixed r is a prior on the number of classes. Calibrated on the 62 classes of a val
split it shattered an inbox of 3 classes (pairwise F1 0.02) and sent a single class entirely to 0.
So the resolution counts per connected component of the pruned graph (components of at least
min_size images; each is one class or a few chained together): the graph gets r = rho * C
(`effective_resolution`), and rho is what evaluate calibrates. One class, three classes or 62 then
all cluster well (benchmarks/cluster_quality.py).

Both number clusters 1, 2, ... by size and send clusters below cluster.min_size to 0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from replearn.clustering.components import find_components, label_components, neighbours_for, number_by_size
from replearn.clustering.graph import knn_graph
from replearn.config import DEFAULT_RESOLUTION, ClusterConfig
from replearn.similarity import as_rows


def effective_resolution(config: ClusterConfig, graph: sp.csr_matrix) -> float:
    """rho (cluster.resolution) times the number of connected components of at least min_size images (at least 1).

    >>> two_triangles = sp.csr_matrix(np.kron(np.eye(2), np.ones((3, 3))) - np.eye(6))
    >>> effective_resolution(ClusterConfig(resolution=0.5, min_size=3), two_triangles)
    1.0
    """
    rho = DEFAULT_RESOLUTION if config.resolution is None else config.resolution
    _, sizes = np.unique(label_components(graph), return_counts=True)
    return rho * max(1, int((sizes >= config.min_size).sum()))


def connected_within(graph: sp.csr_matrix, labels: np.ndarray) -> np.ndarray:
    """Split every community into its connected parts, keeping only the edges inside communities.

    >>> graph = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32))
    >>> connected_within(graph, np.array([0, 0, 0])).tolist()
    [0, 0, 1]
    """
    coo = graph.tocoo()
    inside = labels[coo.row] == labels[coo.col]
    kept = sp.csr_matrix((coo.data[inside], (coo.row[inside], coo.col[inside])), shape=graph.shape)
    return label_components(kept)


def find_communities(embeddings: np.ndarray, threshold: float, config: ClusterConfig) -> np.ndarray:
    """Louvain community of every image in the kNN graph pruned at `threshold` (arbitrary label order).

    Deterministic for a given input order.

    >>> e = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)
    >>> find_communities(e, 0.9, ClusterConfig(neighbors=2)).tolist()
    [0, 0, 1]
    >>> find_communities(e, 0.999, ClusterConfig(neighbors=2)).tolist()
    [0, 1, 2]
    """
    embeddings = as_rows(embeddings)
    if len(embeddings) == 0:
        return np.zeros(0, dtype=np.int64)
    return communities_of(knn_graph(neighbours_for(embeddings, config), threshold, mutual=False), config)


def communities_of(graph: sp.csr_matrix, config: ClusterConfig) -> np.ndarray:
    """Louvain communities of a pruned, similarity-weighted kNN graph, each split into its connected parts.

    Apart from find_communities so that calibration builds the kNN graph of its images once for
    every threshold and resolution it tries.
    """
    from sknetwork.clustering import Louvain

    if graph.nnz == 0:  # nothing links: every image alone (scikit-network refuses a graph without edges)
        return np.arange(graph.shape[0], dtype=np.int64)
    resolution = effective_resolution(config, graph)
    louvain = Louvain(resolution=resolution, modularity="newman", random_state=config.seed)
    return connected_within(graph, np.asarray(louvain.fit_predict(graph), dtype=np.int64))


def find_groups(embeddings: np.ndarray, threshold: float, config: ClusterConfig) -> np.ndarray:
    """Group labels (arbitrary order, every size) by config.method."""
    find = find_communities if config.method == "louvain" else find_components
    return find(embeddings, threshold, config)


def cluster_embeddings(embeddings: np.ndarray, threshold: float, config: ClusterConfig) -> np.ndarray:
    """Cluster ids by config.method: numbered 1, 2, ... by size, clusters below config.min_size -> 0.

    >>> e = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)
    >>> cluster_embeddings(e, 0.9, ClusterConfig(min_size=2, method="components")).tolist()
    [1, 1, 0]
    """
    return number_by_size(find_groups(embeddings, threshold, config), config.min_size)
