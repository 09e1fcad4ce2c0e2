"""Where a batch of new images goes: clustered together with the clusters it is near, so runs add up to one.

A one-shot run clusters every image at once. A scheduled run sees only its batch, so it builds a
window that looks like the one-shot graph around the batch:

- the exemplars (latest members) of every cluster that is the nearest prototype of some new image
  (found by the catalogue's nearest-prototype index, neighbourhood.py);
- the images left unclustered by earlier runs (the pool);
- the batch.

The window is clustered by cluster.method. A group of the window that holds most of a cluster's
exemplars belongs to that cluster, and its new and pool images join it: ids users have seen never
change. When most exemplars of a second cluster fall into a group led by another, the two are one:
the second is recorded as merged into the first (`merged_into`), keeps its id and its members, and
takes no new images. A group that is no cluster's main one (the window split a cluster that an
early, small batch had formed from two classes) or holds no exemplars becomes a new cluster if its
new and pool images reach cluster.min_size.

The window is bounded by the batch, not by the history: only exemplars and pool images linked to a
new image enter it, the pool holds at most cluster.pool_max images and the context at most
cluster.context_exemplars exemplars.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from replearn.clustering.components import UNCLUSTERED, number_by_size
from replearn.clustering.methods import find_groups
from replearn.config import ClusterConfig
from replearn.similarity import nearest


@dataclass
class Placement:
    """Cluster id of every batch image and every pool image (0: unclustered), and what the run decided."""

    batch_ids: np.ndarray
    pool_ids: np.ndarray
    joined_existing: int
    new_clusters: int
    merges: dict[int, int] = field(default_factory=dict)


def group_owners(
    groups: np.ndarray, exemplar_ids: np.ndarray, totals: pd.Series | None = None
) -> tuple[dict[int, int], dict[int, int]]:
    """Which cluster owns each group of the window, and which clusters merged, from where the exemplars fell.

    A cluster's main group is the one holding most of its exemplars (ties to the lower group). A
    group is owned by the cluster, among those whose main group it is, with most exemplars in it
    (ties to the lower id); a group that is no cluster's main group is owned by none: the window
    split it off, and its images may form a new cluster. A cluster with more than half of its
    exemplars (`totals`, per cluster id; by default those given) in a group owned by another merged
    into that one. An owner's main group is its own, so an owner is never merged: no chains, no cycles.

    >>> group_owners(np.array([0, 0, 0, 0, 1, 1]), np.array([5, 5, 7, 7, 7, 9]))
    ({0: 5, 1: 9}, {7: 5})
    >>> group_owners(np.array([0, 0, 0, 1, 2, 2]), np.array([5, 5, 5, 5, 7, 7]))
    ({0: 5, 2: 7}, {})
    """
    if len(groups) == 0:
        return {}, {}
    counts = pd.DataFrame({"group": groups, "cluster": exemplar_ids}).value_counts().rename("n").reset_index()
    main = counts.sort_values(["cluster", "n", "group"], ascending=[True, False, True]).drop_duplicates("cluster")
    totals = counts.groupby("cluster")["n"].sum() if totals is None else totals
    leaders = main.sort_values(["group", "n", "cluster"], ascending=[True, False, True]).drop_duplicates("group")
    owners = dict(zip(leaders["group"].astype(int), leaders["cluster"].astype(int), strict=True))
    owner = main["group"].map(owners)
    merged = main[(main["cluster"] != owner) & (2 * main["n"] > main["cluster"].map(totals))]
    merges = {int(c): owners[int(g)] for c, g in zip(merged["cluster"], merged["group"], strict=True)}
    return owners, merges


def linked_to(embeddings: np.ndarray, candidates: np.ndarray, threshold: float, memory_mb: float) -> np.ndarray:
    """Whether each candidate is at least `threshold` similar to some row of `embeddings` (a faiss k=1 search).

    >>> linked_to(np.array([[1.0, 0.0]]), np.array([[0.8, 0.6], [0.0, 1.0]]), 0.5, memory_mb=1).tolist()
    [True, False]
    """
    return nearest(candidates, embeddings, memory_mb)[1] >= threshold


def place_batch(
    context_ids: np.ndarray,
    context: np.ndarray,
    pool: np.ndarray,
    embeddings: np.ndarray,
    threshold: float,
    config: ClusterConfig,
    next_cluster_id: int,
) -> Placement:
    """Cluster the window (nearby exemplars, pool, batch) and map its groups to existing or new cluster ids.

    Only the exemplars and pool images linked to some new image (similarity >= threshold) enter the
    window: the others have no edge to the batch, and leaving them out keeps the neighbour search the
    size of the batch and its surroundings. Ownership counts a cluster's exemplars in the window;
    merges need more than half of all its exemplars in the context.
    """
    pool = pool.reshape(len(pool), embeddings.shape[1])
    in_context = linked_to(embeddings, context, threshold, config.block_memory_mb)
    in_pool = linked_to(embeddings, pool, threshold, config.block_memory_mb)
    window = np.concatenate([context[in_context], pool[in_pool], embeddings]).astype(np.float32)
    groups = find_groups(window, threshold, config)
    totals = pd.Series(context_ids).value_counts()
    n_context, n_pool = int(in_context.sum()), int(in_pool.sum())
    owners, merges = group_owners(groups[:n_context], context_ids[in_context], totals)

    rest = groups[n_context:]
    owner_of = pd.Series(rest).map(owners)
    owned = owner_of.notna().to_numpy()
    ids = owner_of.fillna(UNCLUSTERED).to_numpy(dtype=np.int64, copy=True)
    ranks = number_by_size(rest[~owned], config.min_size)
    ids[~owned] = np.where(ranks > 0, ranks + next_cluster_id - 1, UNCLUSTERED)
    pool_ids = np.zeros(len(pool), dtype=np.int64)
    pool_ids[in_pool] = ids[:n_pool]
    return Placement(
        batch_ids=ids[n_pool:],
        pool_ids=pool_ids,
        joined_existing=int(owned[n_pool:].sum()),
        new_clusters=int(ranks.max(initial=0)),
        merges=merges,
    )


def without_rejected(pool_ids: np.ndarray, rejected: list[frozenset[int]]) -> np.ndarray:
    """Pool images placed in a cluster a person rejected them from stay unclustered (Catalogue.rejected_from).

    >>> without_rejected(np.array([3, 3, 0]), [frozenset({3}), frozenset(), frozenset({3})]).tolist()
    [0, 3, 0]
    """
    refused = np.array([int(c) in r for c, r in zip(pool_ids, rejected, strict=True)], dtype=bool)
    return np.where(refused, 0, pool_ids)
