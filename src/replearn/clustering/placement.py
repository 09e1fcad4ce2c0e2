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
    """Cluster id of every batch, pool and context image (0: unclustered), and what the run decided.

    `context_ids` is the id each context exemplar has after the run: its own cluster's, or the id of
    the part it was split into, or 0 when its cluster was dissolved. `splits` maps each id issued
    for a split-off part to the cluster it came from; a part that fell into another cluster's group
    is also in `merges`. What the window found but the run left for a person (a confirmed or large
    cluster in pieces: id -> members outside its main part; merges over the churn budget or with a
    confirmed cluster) is in `left_in_pieces` and `left_merges`, for the review page.
    """

    batch_ids: np.ndarray
    pool_ids: np.ndarray
    context_ids: np.ndarray
    joined_existing: int
    new_clusters: int
    merges: dict[int, int] = field(default_factory=dict)
    splits: dict[int, int] = field(default_factory=dict)
    dissolved: list[int] = field(default_factory=list)
    left_in_pieces: dict[int, int] = field(default_factory=dict)
    left_merges: dict[int, int] = field(default_factory=dict)

    @property
    def issued(self) -> int:
        """Cluster ids this placement issues: one per new cluster and one per split-off part."""
        return self.new_clusters + len(self.splits)


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


def confirmed_owners(
    groups: np.ndarray, exemplar_ids: np.ndarray, confirmed: np.ndarray, owned: set[int]
) -> dict[int, int]:
    """Groups no cluster owns but holding a confirmed cluster's exemplars: that cluster owns them (most, then lowest).

    A person may have merged two looks into one cluster; the window then finds it in two groups,
    and new images like either part belong to it.

    >>> confirmed_owners(np.array([0, 0, 1, 1, 1]), np.array([3, 3, 3, 5, 5]), np.array([3, 5]), {0})
    {1: 5}
    """
    mine = np.isin(exemplar_ids, confirmed) & ~np.isin(groups, list(owned))
    if not mine.any():
        return {}
    counts = pd.DataFrame({"group": groups[mine], "cluster": exemplar_ids[mine]}).value_counts().rename("n")
    leaders = counts.reset_index().sort_values(["group", "n", "cluster"], ascending=[True, False, True])
    leaders = leaders.drop_duplicates("group")
    return dict(zip(leaders["group"].astype(int), leaders["cluster"].astype(int), strict=True))


def linked_to(embeddings: np.ndarray, candidates: np.ndarray, threshold: float, memory_mb: float) -> np.ndarray:
    """Whether each candidate is at least `threshold` similar to some row of `embeddings` (a faiss k=1 search).

    >>> linked_to(np.array([[1.0, 0.0]]), np.array([[0.8, 0.6], [0.0, 1.0]]), 0.5, memory_mb=1).tolist()
    [True, False]
    """
    return nearest(candidates, embeddings, memory_mb)[1] >= threshold


@dataclass(frozen=True)
class Context:
    """The exemplars of the clusters near a batch: row i is an exemplar of cluster ids[i].

    `complete` clusters have every member among the exemplars, so the run sees them whole and may
    split or dissolve them unless they are `confirmed`: a person vouched for those, so the run never
    revises or merges them.
    `sizes` holds every cluster's member count by id, and `budget` the most earlier-assigned images
    whose id the run may change (cluster.max_churn of them).
    """

    ids: np.ndarray
    embeddings: np.ndarray
    complete: np.ndarray
    confirmed: np.ndarray
    sizes: pd.Series
    budget: int


def revise_clusters(
    groups: np.ndarray, window_ids: np.ndarray, candidates: np.ndarray, owners: dict[int, int], min_size: int
) -> tuple[dict[int, list[int]], list[int]]:
    """Where the window finds `candidates` in pieces or fallen apart, from where their exemplars fell.

    `groups` labels the whole window and `window_ids` its first rows (the context exemplars in it).
    A cluster whose main group (most of its exemplars) holds fewer than `min_size` images of the
    window has fallen apart: a run on the window alone would leave those images unclustered.
    Otherwise every other group holding at least `min_size` of its exemplars is a part that could
    be split off, listed as cluster -> groups; its main group stays its own. The caller decides
    which of these a run may act on (automatic clusters it sees whole) and which a person reviews.

    >>> groups, window_ids = np.array([0, 0, 0, 1, 1, 1, 2, 0]), np.array([5, 5, 5, 5, 5, 5, 7])
    >>> revise_clusters(groups, window_ids, np.array([5, 7]), {0: 5}, 3)
    ({5: [1]}, [7])
    """
    sizes = pd.Series(groups).value_counts()
    context_groups = groups[: len(window_ids)]
    parts: dict[int, list[int]] = {}
    dissolved: list[int] = []
    for cluster_id in candidates.tolist():
        counts = pd.Series(context_groups[window_ids == cluster_id]).value_counts()
        if counts.empty:
            continue
        counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
        main = int(counts.index[0])
        if owners.get(main) != cluster_id and owners.get(main) is not None:
            continue  # most of it fell into another cluster's group: the merge rule decides
        if sizes[main] < min_size:
            dissolved.append(cluster_id)
            continue
        split = [int(g) for g, n in counts.items() if int(g) != main and n >= min_size]
        if split:
            parts[cluster_id] = sorted(split)
    return parts, dissolved


def within_budget(
    merges: dict[int, int],
    parts: dict[int, list[int]],
    dissolved: list[int],
    part_sizes: dict[tuple[int, int], int],
    sizes: pd.Series,
    budget: int,
) -> tuple[dict[int, int], dict[int, list[int]], list[int]]:
    """The revisions that fit the run's churn budget, smallest first; the others wait for a later run.

    A merge or a dissolve changes the id of every member of its cluster, a split of the part's
    members. Deferring is safe: what a run leaves alone, the next run sees again with more evidence.

    >>> within_budget({4: 1}, {2: [7]}, [3], {(2, 7): 3}, pd.Series({1: 9, 2: 8, 3: 4, 4: 5}), 8)
    ({}, {2: [7]}, [3])
    """
    actions = [(int(sizes[c]), 0, c, o) for c, o in merges.items()]
    actions += [(part_sizes[c, g], 1, c, g) for c, groups in parts.items() for g in groups]
    actions += [(int(sizes[c]), 2, c, 0) for c in dissolved]
    kept_merges: dict[int, int] = {}
    kept_parts: dict[int, list[int]] = {}
    kept_dissolved: list[int] = []
    spent = 0
    for cost, kind, cluster_id, other in sorted(actions):
        if spent + cost > budget:
            continue
        spent += cost
        if kind == 0:
            kept_merges[cluster_id] = other
        elif kind == 1:
            kept_parts.setdefault(cluster_id, []).append(other)
        else:
            kept_dissolved.append(cluster_id)
    return kept_merges, kept_parts, sorted(kept_dissolved)


def place_batch(
    context: Context,
    pool: np.ndarray,
    embeddings: np.ndarray,
    threshold: float,
    config: ClusterConfig,
    next_cluster_id: int,
    every_cluster: bool = False,
) -> Placement:
    """Cluster the window (nearby exemplars, pool, batch) and map its groups to existing or new cluster ids.

    Only the exemplars and pool images linked to some new image (similarity >= threshold) enter the
    window, and every member of a complete cluster that one of them belongs to: the others have no
    edge to the batch, and leaving them out keeps the neighbour search the size of the batch and its
    surroundings. Ownership counts a cluster's exemplars in the window; merges need more than half of
    all its exemplars in the context and never involve a confirmed cluster. Revisable clusters the
    window finds in pieces are split (revise_clusters): the main part keeps the id, each other part
    gets a new one and, when it fell into a group another cluster owns, is merged into that cluster.
    Merges, splits and dissolves together change at most context.budget earlier images' ids.
    With `every_cluster` the whole context and pool join the window, linked or not: the revision
    after a migration, which has no batch.
    """
    pool = pool.reshape(len(pool), context.embeddings.shape[1])
    if every_cluster:
        linked, in_pool = np.ones(len(context.ids), dtype=bool), np.ones(len(pool), dtype=bool)
    else:
        linked = linked_to(embeddings, context.embeddings, threshold, config.block_memory_mb)
        in_pool = linked_to(embeddings, pool, threshold, config.block_memory_mb)
    whole = np.intersect1d(np.unique(context.ids[linked]), context.complete)
    in_context = linked | np.isin(context.ids, whole)
    window = np.concatenate([context.embeddings[in_context], pool[in_pool], embeddings]).astype(np.float32)
    groups = find_groups(window, threshold, config)
    window_ids = context.ids[in_context]
    n_context, n_pool = len(window_ids), int(in_pool.sum())
    owners, proposed_merges = group_owners(groups[:n_context], window_ids, pd.Series(context.ids).value_counts())
    merges = {c: o for c, o in proposed_merges.items() if not np.isin([c, o], context.confirmed).any()}
    owners |= confirmed_owners(groups[:n_context], window_ids, context.confirmed, set(owners))
    found = np.setdiff1d(np.unique(window_ids), list(merges))
    parts, dissolved = revise_clusters(groups, window_ids, found, owners, config.min_size)
    context_groups = groups[:n_context]
    part_sizes = {(c, g): int(((window_ids == c) & (context_groups == g)).sum()) for c, gs in parts.items() for g in gs}
    in_pieces = {c: sum(part_sizes[c, g] for g in gs) for c, gs in parts.items()}
    revisable = np.setdiff1d(whole, context.confirmed)
    parts = {c: gs for c, gs in parts.items() if c in revisable}
    dissolved = [c for c in dissolved if c in revisable]
    merges, parts, dissolved = within_budget(merges, parts, dissolved, part_sizes, context.sizes, context.budget)
    owners = {g: c for g, c in owners.items() if c not in dissolved}

    existing_groups = list(owners)
    window_new_ids = np.where(np.isin(window_ids, dissolved), UNCLUSTERED, window_ids)
    splits: dict[int, int] = {}
    claimed: dict[int, int] = {}
    next_id = next_cluster_id
    for cluster_id, part_groups in parts.items():
        for group in part_groups:
            splits[next_id] = cluster_id
            owner = owners.get(group, claimed.get(group))
            if owner is None:
                claimed[group] = next_id
            elif not np.isin(owner, context.confirmed):
                merges[next_id] = owner
            window_new_ids[(window_ids == cluster_id) & (context_groups == group)] = next_id
            next_id += 1
    owners |= claimed

    rest = groups[n_context:]
    unowned = ~np.isin(rest, list(owners))
    ranks = number_by_size(rest[unowned], config.min_size)
    ids = pd.Series(rest).map(owners).fillna(UNCLUSTERED).to_numpy(dtype=np.int64, copy=True)
    ids[unowned] = np.where(ranks > 0, ranks + next_id - 1, UNCLUSTERED)
    pool_ids = np.zeros(len(pool), dtype=np.int64)
    pool_ids[in_pool] = ids[:n_pool]
    context_ids = context.ids.copy()
    context_ids[in_context] = window_new_ids
    return Placement(
        batch_ids=ids[n_pool:],
        pool_ids=pool_ids,
        context_ids=context_ids,
        joined_existing=int(np.isin(rest[n_pool:], existing_groups).sum()),
        new_clusters=int(ranks.max(initial=0)),
        merges=merges,
        splits=splits,
        dissolved=dissolved,
        left_in_pieces={c: n for c, n in in_pieces.items() if c not in parts},
        left_merges={c: o for c, o in proposed_merges.items() if c not in merges},
    )


def without_rejected(pool_ids: np.ndarray, rejected: list[frozenset[int]]) -> np.ndarray:
    """Pool images placed in a cluster a person rejected them from stay unclustered (Catalogue.rejected_from).

    >>> without_rejected(np.array([3, 3, 0]), [frozenset({3}), frozenset(), frozenset({3})]).tolist()
    [0, 3, 0]
    """
    refused = np.array([int(c) in r for c, r in zip(pool_ids, rejected, strict=True)], dtype=bool)
    return np.where(refused, 0, pool_ids)
