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
    Catalogue,
    CatalogueChange,
    Event,
    clusters_schema,
    events_table,
    images_schema,
    runs_table,
)
from replearn.clustering.placement import Placement
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
    context: np.ndarray  # ... and embeddings
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


def embeddings_of(rows: pa.Table, dim: int) -> np.ndarray:
    return np.asarray(vectors_of(rows, "embedding", dim), dtype=np.float32)


def neighbourhood_of(catalogue: Catalogue, embeddings: np.ndarray, config: ClusterConfig) -> Neighbourhood:
    """Read what the batch touches: the nearest active cluster of each new image, its exemplars, the pool.

    At most cluster.context_exemplars exemplars join the window, so it is bounded whatever the
    number of clusters: when a batch touches many clusters, each gives its latest few (at least one).
    """
    dim = embeddings.shape[1]
    nearest = catalogue.nearest_clusters(embeddings, config.nprobe)
    touched = np.unique(nearest[nearest > 0]).astype(np.int64)
    if len(touched):
        rows = catalogue.cluster_rows(touched)
        exemplars = [np.asarray(e, dtype=np.uint64) for e in rows.column("exemplars").to_pylist()]
        per_cluster = max(1, min(config.exemplars, config.context_exemplars // len(touched)))
        taken = [e[-per_cluster:] for e in exemplars]
        context_ids = np.concatenate([np.full(len(e), c) for c, e in zip(touched, taken, strict=True)])
        digests = np.concatenate(taken)
        context = embeddings_of(catalogue.image_rows(digests), dim)
        sums = vectors_of(rows, "sum", dim).astype(np.float64)
        states, names = rows.column("state").to_pylist(), rows.column("name").to_pylist()
        sizes, created = column_array(rows, "size"), column_array(rows, "created_run")
        merged = column_array(rows, "merged_into")
    else:
        exemplars, context_ids, context = [], np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        sums, sizes, created, merged = np.zeros((0, dim)), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        states, names = [], []
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


@dataclass
class RunRows:
    """What a placement changes: the run's members (batch, then pool images that joined), counts, merges."""

    members: pd.DataFrame
    counts: dict[str, int]
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
    """
    run = catalogue.run + 1
    dim = embeddings.shape[1]
    batch_ids, pool_ids = placement.batch_ids, placement.pool_ids
    moved, clustered = pool_ids > 0, batch_ids > 0
    member_ids = np.concatenate([batch_ids[clustered], pool_ids[moved]])
    member_vectors = np.concatenate([embeddings[clustered], view.pool_embeddings[moved]])
    member_digests = np.concatenate(
        [batch_frame["digest"].to_numpy(np.uint64)[clustered], view.pool["digest"].to_numpy(np.uint64)[moved]]
    )
    existing = set(view.cluster_ids.tolist())
    add_to_clusters(view, member_ids, member_vectors, run)
    grouped = pd.Series(member_digests).groupby(member_ids, sort=True).agg(list) if len(member_ids) else pd.Series()
    for cluster_id, digests in grouped.items():  # the latest cluster.exemplars members stand for the cluster
        row = int(view.rows_of(np.array([cluster_id]))[0])
        view.exemplars[row] = np.concatenate([view.exemplars[row], np.array(digests, np.uint64)])[-config.exemplars :]
    for merged, owner in placement.merges.items():
        view.merged_into[view.rows_of(np.array([merged]))[0]] = owner

    changed = np.union1d(np.unique(member_ids), np.array(sorted(placement.merges), dtype=np.int64)).astype(np.int64)
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

    joined = view.pool[moved]
    members = pd.concat(
        [batch_frame.assign(cluster_id=batch_ids, run=run), joined.assign(cluster_id=pool_ids[moved])],
        ignore_index=True,
    )
    member_embeddings = np.concatenate([embeddings, view.pool_embeddings[moved]])
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
        [view.pool["digest"].to_numpy(np.uint64)[~moved], batch_frame["digest"].to_numpy(np.uint64)[~clustered]]
    )
    retired = max(0, len(pool) - config.pool_max)
    new_ids = np.setdiff1d(changed, np.array(sorted(existing), dtype=np.int64))
    added = pd.Series(member_ids).value_counts() if len(member_ids) else pd.Series(dtype=np.int64)
    events = run_events(run, run_info["time"], new_ids, added, placement.merges, view)
    counts = {
        "new_images": len(batch_frame),
        "assigned_to_existing": placement.joined_existing,
        "new_clusters": placement.new_clusters,
        "earlier_unclustered_joined": int(moved.sum()),
        "unclustered": int((~clustered).sum()),
        "merged": len(placement.merges),
        "retired_from_pool": retired,
    }
    change = CatalogueChange(
        images=images,
        clusters=clusters,
        events=events,
        runs=runs_table([{"run": run, **run_info, **counts}]),
        pool=pool[retired:],
        next_cluster_id=catalogue.next_cluster_id + placement.new_clusters,
    )
    changed_clusters = pd.DataFrame(
        {
            "id": changed,
            "size": view.sizes[rows],
            "cohesion": cohesion.round(6),
            "added_this_run": pd.Series(changed).map(added).fillna(0).astype(np.int64).to_numpy(),
            "new_this_run": np.isin(changed, new_ids),
            "merged_into": view.merged_into[rows],
        }
    )
    return RunRows(members[MEMBER_COLUMNS], counts, placement.merges, change, changed_clusters)


def run_events(
    run: int, time: str, new_ids: np.ndarray, added: pd.Series, merges: dict[int, int], view: Neighbourhood
) -> pa.Table:
    """created for new clusters, joined for existing clusters that took images, merged_into for merges."""
    new = set(new_ids.tolist())
    events = [Event(run, time, "created", int(c), images=int(added.get(c, 0))) for c in new_ids]
    events += [Event(run, time, "joined", int(c), images=int(n)) for c, n in added.sort_index().items() if c not in new]
    events += [
        Event(run, time, "merged_into", m, o, images=int(view.sizes[view.rows_of(np.array([m]))[0]]))
        for m, o in merges.items()
    ]
    return events_table(events)


def similarity_to_prototype(view: Neighbourhood, cluster_ids: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Each image's similarity to its cluster's (updated) prototype; NaN for unclustered images."""
    similarity = np.full(len(cluster_ids), np.nan)
    clustered = cluster_ids > 0
    if clustered.any():
        rows = view.rows_of(cluster_ids[clustered])
        similarity[clustered] = np.einsum("ij,ij->i", embeddings[clustered], view.prototypes[rows])
    return similarity
