"""Reading the catalogue as users see it: one row per image or cluster, and the full assignments CSV on request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from replearn.atomic import atomic_path
from replearn.catalogue.store import TABLE_KEYS, load_catalogue
from replearn.errors import UserError

EXPORT_COLUMNS = ["path", "cluster_id", "similarity", "run", "changed_run"]


def read_table(out_dir: Path, name: str, embeddings: bool = False) -> pd.DataFrame:
    """A catalogue table as pandas: images and clusters with the newest row per key, events and runs whole.

    The vector columns (an image's embedding, a cluster's member sum) are left out unless asked for.
    """
    if name not in TABLE_KEYS:
        raise UserError(f"the catalogue has no table {name!r}; its tables are {', '.join(TABLE_KEYS)}")
    catalogue = load_catalogue(out_dir)
    if catalogue.run == 0:
        raise UserError(f"{out_dir} holds no cluster catalogue yet (run `replearn cluster MODEL INBOX {out_dir}`)")
    table = catalogue.tables[name].read_all()
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
