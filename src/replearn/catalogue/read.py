"""Reading the catalogue as users see it: one row per image or cluster, one cluster with its members, the CSV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from replearn.atomic import atomic_path
from replearn.catalogue.members import members_of, merge_forest, subtree_of
from replearn.catalogue.store import TABLE_KEYS, load_catalogue, table_schema
from replearn.errors import UserError

EXPORT_COLUMNS = ["path", "cluster_id", "similarity", "run", "changed_run"]
LIST_COLUMNS = ["id", "state", "name", "size", "cohesion", "created_run", "changed_run"]
MEMBER_COLUMNS = ["path", "key", "cluster_id", "similarity", "run", "changed_run"]


def read_table(out_dir: Path, name: str, embeddings: bool = False) -> pd.DataFrame:
    """A catalogue table as pandas: images and clusters with the newest row per key, events and runs whole.

    The vector columns (an image's embedding, a cluster's member sum) are left out unless asked for.
    """
    if name not in TABLE_KEYS:
        raise UserError(f"the catalogue has no table {name!r}; its tables are {', '.join(TABLE_KEYS)}")
    catalogue = load_catalogue(out_dir)
    if catalogue.run == 0:
        raise UserError(f"{out_dir} holds no cluster catalogue yet (run `replearn cluster MODEL INBOX {out_dir}`)")
    stored = catalogue.tables[name]  # no segment yet (no rejection; every image undone): empty, with its columns
    table = stored.read_all() if stored.segments else table_schema(name, catalogue.embedding_dim or 0).empty_table()
    if not embeddings:
        table = table.drop_columns([c for c in ("embedding", "sum") if c in table.column_names])
    return table.to_pandas()


def current_assignments(out_dir: Path) -> pd.DataFrame:
    """path, cluster_id, similarity and the runs that placed and last changed each image, sorted by path."""
    images = read_table(out_dir, "images")
    return images[EXPORT_COLUMNS].sort_values("path", kind="stable").reset_index(drop=True)


def export_assignments(out_dir: Path, target: Path) -> int:
    """Write the current assignment of every image as CSV (atomically); returns the number of rows."""
    assignments = current_assignments(out_dir)
    with atomic_path(target) as temporary:
        assignments.to_csv(temporary, index=False, float_format="%.6f")
    return len(assignments)


def merges(out_dir: Path) -> dict[int, int]:
    """Every cluster found to be one with another: id -> the id it was merged into (follow it; it may chain)."""
    clusters = read_table(out_dir, "clusters")
    merged = clusters[clusters["merged_into"] > 0]
    return dict(zip(merged["id"].astype(int), merged["merged_into"].astype(int), strict=True))


def list_clusters(out_dir: Path) -> pd.DataFrame:
    """The clusters a user sees (those not merged into another): id, state, name, size, cohesion, runs."""
    clusters = read_table(out_dir, "clusters")
    return clusters.loc[clusters["merged_into"] == 0, LIST_COLUMNS].sort_values("id").reset_index(drop=True)


@dataclass
class ClusterView:
    """One cluster as `replearn clusters show` prints it."""

    cluster: dict[str, Any]  # its clusters row, without the member sum
    merged: list[int]  # the clusters merged into it, directly or through others
    members: pd.DataFrame  # MEMBER_COLUMNS (cluster_id as stored), most similar to the prototype first


def show_cluster(out_dir: Path, cluster_id: int) -> ClusterView:
    """A cluster's row and every member, merges followed: a scan of the images table's cluster_id column."""
    catalogue = load_catalogue(out_dir)
    where, rows = catalogue.clusters.find(np.array([cluster_id], dtype=np.int64))
    if where[0] < 0:
        raise UserError(f"there is no cluster {cluster_id} in {out_dir} (`replearn clusters list` shows them)")
    cluster = catalogue.clusters.take(where, rows).drop_columns(["sum"]).to_pylist()[0]
    inside = subtree_of([cluster_id], merge_forest(catalogue))
    members = members_of(catalogue, inside).select(MEMBER_COLUMNS).to_pandas()
    members = members.sort_values(["similarity", "path"], ascending=[False, True], kind="stable")
    return ClusterView(cluster, sorted(inside - {cluster_id}), members.reset_index(drop=True))


def follow_merges(cluster_ids: np.ndarray, merged_into: dict[int, int]) -> np.ndarray:
    """The cluster each id belongs to now, following the clusters table's merged_into (which may chain).

    >>> follow_merges(np.array([0, 2, 3, 5]), {3: 2, 2: 1}).tolist()
    [0, 1, 1, 5]
    """

    def final(cluster_id: int) -> int:
        while cluster_id in merged_into:
            cluster_id = merged_into[cluster_id]
        return cluster_id

    return np.array([final(int(cluster_id)) for cluster_id in cluster_ids], dtype=np.int64)
