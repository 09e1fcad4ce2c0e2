"""The part of the catalogue one batch touches, and the rows a run writes back: what keeps a run O(batch).

A run never loads the catalogue. It asks the nearest-prototype index which clusters its new images
are near, reads those clusters' rows and the exemplars the window needs, and the pool (at most
cluster.pool_max images). After placement, it writes a row for every cluster and image it
changed, an event for every change, and the new pool; nothing else is read or rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from replearn.catalogue.segments import column_array, vector_column, vectors_of
from replearn.catalogue.store import (
    AUTOMATIC,
    CONFIRMED,
    Catalogue,
    CatalogueChange,
    Event,
    clusters_schema,
    events_table,
    images_schema,
    runs_table,
)
from replearn.clustering.placement import Context, Placement
from replearn.config import ClusterConfig

MEMBER_COLUMNS = ["key", "path", "source", "sha256", "cluster_id", "similarity", "run"]


@dataclass
class Neighbourhood:
    """The clusters nearest to a batch (row i: cluster_ids[i], sorted) and the pool, as a run sees them."""

    cluster_ids: np.ndarray
    sums: np.ndarray
    sizes: np.ndarray
    exemplars: list[np.ndarray]  # digests of each cluster's latest members, oldest first
    states: list[str]
    names: list[str | None]
    created_runs: np.ndarray
    merged_into: np.ndarray
    context_ids: np.ndarray  # the exemplars that join the window: their cluster ids ...
    context: np.ndarray  # ... embeddings ...
    context_digests: np.ndarray  # ... and image digests
    complete: np.ndarray  # clusters with every member in the context
    pool: pd.DataFrame  # digest, key, path, source, sha256, run
    pool_embeddings: np.ndarray

    @property
    def prototypes(self) -> np.ndarray:
        """Unit-length mean embedding of each cluster, row i for cluster_ids[i]."""
        norms = np.linalg.norm(self.sums, axis=1, keepdims=True)
        return (self.sums / np.maximum(norms, 1e-12)).astype(np.float32)

    @property
    def cohesion(self) -> np.ndarray:
        """Mean similarity of each cluster's members to its prototype: |sum of members| / count."""
        return np.linalg.norm(self.sums, axis=1) / np.maximum(self.sizes, 1)

    def rows_of(self, cluster_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.cluster_ids, cluster_ids)

    @property
    def confirmed(self) -> np.ndarray:
        return self.cluster_ids[np.array([state == CONFIRMED for state in self.states], dtype=bool)]

    def placement_context(self, budget: int) -> Context:
        sizes = pd.Series(self.sizes, index=self.cluster_ids)
        return Context(self.context_ids, self.context, self.complete, self.confirmed, sizes, budget)


def embeddings_of(rows: pa.Table, dim: int) -> np.ndarray:
    return np.asarray(vectors_of(rows, "embedding", dim), dtype=np.float32)


def neighbourhood_of(catalogue: Catalogue, embeddings: np.ndarray, config: ClusterConfig) -> Neighbourhood:
    """Read what the batch touches: the nearest active cluster of each new image, its exemplars, the pool.

    At most cluster.context_exemplars exemplars join the window, so it is bounded whatever the
    number of clusters: when a batch touches many clusters, each gives its latest few (at least one).
    A cluster whose every member is among them (size <= cluster.exemplars) is complete: the run sees
    all of it, so it may split or dissolve it (automatic) or suggest a split (confirmed) at the cost
    of its exemplars.
    """
    nearest = catalogue.nearest_clusters(embeddings, config.nprobe)
    touched = np.unique(nearest[nearest > 0]).astype(np.int64)
    per_cluster = max(1, min(config.exemplars, config.context_exemplars // max(len(touched), 1)))
    return view_of(catalogue, touched, embeddings.shape[1], per_cluster)


def whole_catalogue(catalogue: Catalogue, config: ClusterConfig) -> Neighbourhood:
    """Every active cluster with all its exemplars, and the pool: the view of a revision after a migration.

    It reads the whole clusters table and up to cluster.exemplars images a cluster: O(catalogue),
    as the migration before it.
    """
    touched = np.zeros(0, dtype=np.int64)
    if catalogue.clusters.segments:
        clusters = catalogue.clusters.read_all()
        active = (column_array(clusters, "merged_into") == 0) & (column_array(clusters, "size") > 0)
        touched = column_array(clusters, "id")[active].astype(np.int64)
    return view_of(catalogue, touched, catalogue.embedding_dim or 0, config.exemplars)


def view_of(catalogue: Catalogue, touched: np.ndarray, dim: int, per_cluster: int) -> Neighbourhood:
    """The rows of the `touched` clusters (sorted ids), the latest `per_cluster` exemplars of each, and the pool."""
    if len(touched):
        rows = catalogue.cluster_rows(touched)
        exemplars = [np.asarray(e, dtype=np.uint64) for e in rows.column("exemplars").to_pylist()]
        taken = [e[-per_cluster:] for e in exemplars]
        context_ids = np.concatenate([np.full(len(e), c) for c, e in zip(touched, taken, strict=True)])
        digests = np.concatenate(taken)
        context = embeddings_of(catalogue.image_rows(digests), dim)
        sums = vectors_of(rows, "sum", dim).astype(np.float64)
        states, names = rows.column("state").to_pylist(), rows.column("name").to_pylist()
        sizes, created = column_array(rows, "size"), column_array(rows, "created_run")
        merged = column_array(rows, "merged_into")
        whole = np.array([len(e) == size for e, size in zip(taken, sizes, strict=True)], dtype=bool)
        complete = touched[whole]
    else:
        exemplars, context_ids, context = [], np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        sums, sizes, created, merged = np.zeros((0, dim)), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        states, names, digests, complete = [], [], np.zeros(0, np.uint64), np.zeros(0, np.int64)
    pool_rows = catalogue.image_rows(catalogue.pool) if len(catalogue.pool) else None
    pool = (
        pool_rows.select(["digest", "key", "path", "source", "sha256", "run"]).to_pandas()
        if pool_rows is not None
        else pd.DataFrame(columns=["digest", "key", "path", "source", "sha256", "run"])
    )
    pool_embeddings = embeddings_of(pool_rows, dim) if pool_rows is not None else np.zeros((0, dim), np.float32)
    return Neighbourhood(
        cluster_ids=touched,
        sums=np.array(sums, dtype=np.float64),
        sizes=np.array(sizes, dtype=np.int64),
        exemplars=exemplars,
        states=list(states),
        names=list(names),
        created_runs=np.array(created, dtype=np.int64),
        merged_into=np.array(merged, dtype=np.int64),
        context_ids=context_ids.astype(np.int64),
        context=context,
        context_digests=np.asarray(digests, dtype=np.uint64),
        complete=complete.astype(np.int64),
        pool=pool,
        pool_embeddings=pool_embeddings,
    )


def add_to_clusters(view: Neighbourhood, cluster_ids: np.ndarray, embeddings: np.ndarray, run: int) -> None:
    """Add members to clusters of the view (new ids become new rows), updating sums and counts in place."""
    if len(cluster_ids) == 0:
        return
    new_ids = np.setdiff1d(np.unique(cluster_ids), view.cluster_ids)
    if len(new_ids):
        count = len(new_ids)
        view.cluster_ids = np.concatenate([view.cluster_ids, new_ids])
        view.sums = np.concatenate([view.sums.reshape(-1, embeddings.shape[1]), np.zeros((count, embeddings.shape[1]))])
        view.sizes = np.concatenate([view.sizes, np.zeros(count, dtype=np.int64)])
        view.exemplars += [np.zeros(0, dtype=np.uint64) for _ in range(count)]
        view.states += [AUTOMATIC] * count
        view.names += [None] * count
        view.created_runs = np.concatenate([view.created_runs, np.full(count, run)])
        view.merged_into = np.concatenate([view.merged_into, np.zeros(count, dtype=np.int64)])
    order = np.argsort(view.cluster_ids, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        raise AssertionError("new cluster ids are issued above every existing one")
    rows = view.rows_of(cluster_ids)
    np.add.at(view.sums, rows, embeddings.astype(np.float64))
    np.add.at(view.sizes, rows, 1)


def take_from_clusters(
    view: Neighbourhood, cluster_ids: np.ndarray, digests: np.ndarray, embeddings: np.ndarray
) -> None:
    """Take members out of their clusters of the view: sums, counts and exemplars, in place."""
    rows = view.rows_of(cluster_ids)
    np.subtract.at(view.sums, rows, embeddings.astype(np.float64))
    np.subtract.at(view.sizes, rows, 1)
    for row in np.unique(rows):
        view.exemplars[row] = view.exemplars[row][~np.isin(view.exemplars[row], digests)]


def within_confirmed(
    view: Neighbourhood, cluster_ids: np.ndarray, embeddings: np.ndarray, threshold: float
) -> np.ndarray:
    """The ids with images sent to a confirmed cluster set to 0 unless the threshold links them to one of its members.

    A person vouched for a confirmed cluster, so a run only adds images with an edge of the graph
    (similarity >= threshold) to one of its exemplars, not those the window's groups merely put near
    it. The nearest exemplar, not the prototype: a person may have merged two looks into one cluster.
    """
    ids = cluster_ids.copy()
    for cluster_id in np.intersect1d(ids, view.confirmed):
        sent = np.flatnonzero(ids == cluster_id)
        members = view.context[view.context_ids == cluster_id]
        linked = (embeddings[sent] @ members.T).max(axis=1, initial=-1.0) >= threshold
        ids[sent[~linked]] = 0
    return ids


@dataclass
class RunRows:
    """What a placement changes: the run's members (batch, pool images that joined, members moved), counts, merges."""

    members: pd.DataFrame
    counts: dict[str, Any]
    merges: dict[int, int]
    change: CatalogueChange
    changed_clusters: pd.DataFrame


def revise(
    catalogue: Catalogue,
    view: Neighbourhood,
    batch_frame: pd.DataFrame,
    embeddings: np.ndarray,
    placement: Placement,
    config: ClusterConfig,
    run_info: dict[str, Any],
) -> RunRows:
    """Apply a placement to the view and turn it into the rows, events and pool of the run's commit.

    `batch_frame` holds digest, key, path, source, sha256 of the batch, row i for embeddings[i].
    Members of revised clusters (split off or dissolved) get new image rows; a dissolved cluster
    keeps its row with size 0 and its images go to the pool.
    """
    run = catalogue.run + 1
    dim = embeddings.shape[1]
    threshold = float(run_info["threshold"])
    existing = view.cluster_ids.copy()
    sizes_before = view.sizes.copy()
    batch_ids = within_confirmed(view, placement.batch_ids, embeddings, threshold)
    pool_ids = within_confirmed(view, placement.pool_ids, view.pool_embeddings, threshold)
    moved, clustered = pool_ids > 0, batch_ids > 0
    revised = placement.context_ids != view.context_ids
    revised_digests = view.context_digests[revised]
    revised_to = placement.context_ids[revised]
    take_from_clusters(view, view.context_ids[revised], revised_digests, view.context[revised])
    back = revised_to > 0

    member_ids = np.concatenate([batch_ids[clustered], pool_ids[moved], revised_to[back]])
    member_vectors = np.concatenate([embeddings[clustered], view.pool_embeddings[moved], view.context[revised][back]])
    member_digests = np.concatenate(
        [
            batch_frame["digest"].to_numpy(np.uint64)[clustered],
            view.pool["digest"].to_numpy(np.uint64)[moved],
            revised_digests[back],
        ]
    )
    add_to_clusters(view, member_ids, member_vectors, run)
    grouped = pd.Series(member_digests).groupby(member_ids, sort=True).agg(list) if len(member_ids) else pd.Series()
    for cluster_id, digests in grouped.items():  # the latest cluster.exemplars members stand for the cluster
        row = int(view.rows_of(np.array([cluster_id]))[0])
        view.exemplars[row] = np.concatenate([view.exemplars[row], np.array(digests, np.uint64)])[-config.exemplars :]
    for merged, owner in placement.merges.items():
        merged_row, owner_row = view.rows_of(np.array([merged, owner]))
        view.merged_into[merged_row] = owner
        view.sizes[owner_row] += view.sizes[merged_row]
        view.sums[owner_row] += view.sums[merged_row]
        both = np.concatenate([view.exemplars[owner_row], view.exemplars[merged_row]])
        view.exemplars[owner_row] = both[-config.exemplars :]

    merge_pairs = np.array(sorted(placement.merges.items()), dtype=np.int64).reshape(-1, 2)
    touched = [member_ids, merge_pairs.ravel(), view.context_ids[revised], placement.dissolved]
    changed = np.unique(np.concatenate([np.asarray(t, dtype=np.int64) for t in touched])).astype(np.int64)
    rows = view.rows_of(changed)
    cohesion = view.cohesion[rows]
    clusters = pa.table(
        {
            "id": pa.array(changed, pa.int64()),
            "state": pa.array([view.states[r] for r in rows], pa.string()),
            "name": pa.array([view.names[r] for r in rows], pa.string()),
            "size": pa.array(view.sizes[rows], pa.int64()),
            "sum": vector_column(view.sums[rows].reshape(-1, dim), pa.float64()),
            "cohesion": pa.array(cohesion, pa.float64()),
            "created_run": pa.array(view.created_runs[rows], pa.int64()),
            "changed_run": pa.array(np.full(len(rows), run), pa.int64()),
            "merged_into": pa.array(view.merged_into[rows], pa.int64()),
            "exemplars": pa.array([view.exemplars[r] for r in rows], pa.list_(pa.uint64())),
        },
        schema=clusters_schema(dim),
    )

    stored = catalogue.image_rows(revised_digests) if revised.any() else images_schema(dim).empty_table()
    stored = stored.select(["digest", "key", "path", "source", "sha256", "run"])
    members = pd.concat(
        [
            batch_frame.assign(cluster_id=batch_ids, run=run),
            view.pool[moved].assign(cluster_id=pool_ids[moved]),
            stored.to_pandas().assign(cluster_id=revised_to),
        ],
        ignore_index=True,
    )
    member_embeddings = np.concatenate([embeddings, view.pool_embeddings[moved], view.context[revised]])
    members["similarity"] = similarity_to_prototype(view, members["cluster_id"].to_numpy(), member_embeddings)
    images = pa.table(
        {
            "digest": pa.array(members["digest"].to_numpy(np.uint64), pa.uint64()),
            "key": pa.array(members["key"], pa.string()),
            "path": pa.array(members["path"], pa.string()),
            "source": pa.array(members["source"], pa.string()),
            "sha256": pa.array(members["sha256"], pa.string()),
            "run": pa.array(members["run"].to_numpy(np.int64), pa.int64()),
            "cluster_id": pa.array(members["cluster_id"].to_numpy(np.int64), pa.int64()),
            "similarity": pa.array(members["similarity"].to_numpy(np.float64), pa.float64()),
            "changed_run": pa.array(np.full(len(members), run), pa.int64()),
            "embedding": vector_column(member_embeddings.astype(np.float32), pa.float32()),
        },
        schema=images_schema(dim),
    )

    # The pool keeps the newest cluster.pool_max unclustered images; older ones stay in cluster 0 for good.
    pool = np.concatenate(
        [
            view.pool["digest"].to_numpy(np.uint64)[~moved],
            revised_digests[~back],
            batch_frame["digest"].to_numpy(np.uint64)[~clustered],
        ]
    )
    retired = max(0, len(pool) - config.pool_max)
    new_ids = np.setdiff1d(changed, existing)
    added = pd.Series(member_ids).value_counts() if len(member_ids) else pd.Series(dtype=np.int64)
    events = run_events(run, run_info["time"], new_ids, added, placement, view)
    merged_before = np.intersect1d(np.array(sorted(placement.merges), dtype=np.int64), existing)
    changed_ids = int(revised.sum() + sizes_before[np.searchsorted(existing, merged_before)].sum())
    assigned_before = catalogue.assigned_images()
    counts: dict[str, Any] = {
        "new_images": len(batch_frame),
        "assigned_to_existing": int(np.isin(batch_ids, existing[existing > 0]).sum()),
        "new_clusters": placement.new_clusters,
        "earlier_unclustered_joined": int(moved.sum()),
        "unclustered": int((~clustered).sum()),
        "merged": len(placement.merges),
        "retired_from_pool": retired,
        "split": len(placement.splits),
        "dissolved": len(placement.dissolved),
        "changed_ids": changed_ids,
        "assigned": assigned_before + int(clustered.sum() + moved.sum() - (~back).sum()),
        "churn": changed_ids / assigned_before if assigned_before else 0.0,
    }
    change = CatalogueChange(
        images=images,
        clusters=clusters,
        events=events,
        runs=runs_table([{"run": run, **run_info, **counts}]),
        pool=pool[retired:],
        next_cluster_id=catalogue.next_cluster_id + placement.issued,
    )
    changed_clusters = pd.DataFrame(
        {
            "id": changed,
            "state": [view.states[r] for r in rows],
            "name": [view.names[r] for r in rows],
            "size": view.sizes[rows],
            "cohesion": cohesion.round(6),
            "added_this_run": pd.Series(changed).map(added).fillna(0).astype(np.int64).to_numpy(),
            "new_this_run": np.isin(changed, new_ids),
            "merged_into": view.merged_into[rows],
        }
    )
    return RunRows(members[MEMBER_COLUMNS], counts, placement.merges, change, changed_clusters)


def run_events(
    run: int, time: str, new_ids: np.ndarray, added: pd.Series, placement: Placement, view: Neighbourhood
) -> pa.Table:
    """created, split_from, joined, merged_into and dissolved: one event for each change to a cluster.

    A part split off is `split_from` its cluster (other_id) instead of created; when it fell into
    another cluster's group it is also `merged_into` that one.
    """

    def size_of(cluster_id: int) -> int:
        return int(view.sizes[view.rows_of(np.array([cluster_id]))[0]])

    splits = placement.splits
    events = [
        Event(run, time, "split_from", c, splits[c], images=int(added.get(c, 0)))
        if c in splits
        else Event(run, time, "created", c, images=int(added.get(c, 0)))
        for c in new_ids.tolist()
    ]
    new = set(new_ids.tolist())
    events += [Event(run, time, "joined", int(c), images=int(n)) for c, n in added.sort_index().items() if c not in new]
    events += [Event(run, time, "merged_into", m, o, images=size_of(m)) for m, o in placement.merges.items()]
    dissolved = view.context_ids[np.isin(view.context_ids, placement.dissolved)]
    events += [Event(run, time, "dissolved", c, images=int((dissolved == c).sum())) for c in placement.dissolved]
    return events_table(events)


def similarity_to_prototype(view: Neighbourhood, cluster_ids: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Each image's similarity to its cluster's (updated) prototype; NaN for unclustered images."""
    similarity = np.full(len(cluster_ids), np.nan)
    clustered = cluster_ids > 0
    if clustered.any():
        rows = view.rows_of(cluster_ids[clustered])
        similarity[clustered] = np.einsum("ij,ij->i", embeddings[clustered], view.prototypes[rows])
    return similarity
