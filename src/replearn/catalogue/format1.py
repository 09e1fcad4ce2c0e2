"""Conversion of a format-1 registry (OUT/registry: npz files, parquet member segments, manifest.json).

Format 1 kept the members without their embeddings, the latest cluster.exemplars members of each
cluster as embeddings, and the pool. The conversion keeps every id, member, merge and pool image:

- images: the newest row of every key; the exemplars and pool images get their embeddings back
  (a format-1 cluster's exemplars are its latest members in the order the segments list them),
  the others have none (a later model migration re-embeds them);
- clusters: id, size and member sum, merged_into, created and last changed run from the members;
- events: `created` for every cluster and `merged_into` for every merge, as the runs recorded them;
- runs: the manifest's list of runs.

OUT/registry is left as it was; the catalogue is written beside it, and its manifest is the commit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from replearn.catalogue.segments import vector_column
from replearn.catalogue.store import (
    CATALOGUE_DIR,
    Catalogue,
    CatalogueChange,
    Event,
    clusters_schema,
    commit_change,
    events_table,
    images_schema,
    key_digests,
    runs_table,
)
from replearn.errors import UserError

log = logging.getLogger(__name__)


def with_merged(values: np.ndarray, cluster_ids: np.ndarray, merged_into: dict[int, int]) -> np.ndarray:
    """Each cluster's value (size, member sum) plus those of the clusters merged into it, along chains.

    Format 1 kept each cluster's own members only; format 2 counts every image whose current id it is.

    >>> with_merged(np.array([5, 4, 3]), np.array([1, 2, 3]), {3: 2, 2: 1}).tolist()
    [12, 7, 3]
    """
    row = {int(c): i for i, c in enumerate(cluster_ids)}
    total = values.copy()
    for merged in merged_into:
        owner = merged
        while owner in merged_into:
            owner = merged_into[owner]
            total[row[owner]] += values[row[merged]]
    return total


def read_format1(directory: Path) -> tuple[dict, pd.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(manifest, every member row in segment order, prototypes npz, pool npz) of OUT/registry."""
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != 1:
            raise ValueError(f"format {manifest.get('format')!r}, expected 1")
        members = pd.concat([pd.read_parquet(directory / name) for name in manifest["segments"]], ignore_index=True)
        with np.load(directory / manifest["prototypes"]) as file:
            prototypes = dict(file)
        with np.load(directory / manifest["pool"], allow_pickle=False) as file:
            pool = dict(file)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cluster registry {manifest_path} is unreadable ({error}); it was not converted") from None
    return manifest, members, prototypes, pool


def exemplar_keys(members: pd.DataFrame, exemplar_ids: np.ndarray) -> np.ndarray:
    """The key of each format-1 exemplar: cluster c's k exemplars are its last k member rows, in order.

    >>> rows = pd.DataFrame({"key": list("abcde"), "cluster_id": [1, 2, 1, 1, 0]})
    >>> exemplar_keys(rows, np.array([2, 1, 1])).tolist()
    ['b', 'c', 'd']
    """
    keys = np.empty(len(exemplar_ids), dtype=object)
    for cluster_id in np.unique(exemplar_ids):
        slots = np.flatnonzero(exemplar_ids == cluster_id)
        rows = members.loc[members["cluster_id"] == cluster_id, "key"].to_numpy()
        keys[slots] = rows[len(rows) - len(slots) :] if len(rows) >= len(slots) else None
    return keys


def merge_run(last_change: int, merge_runs: list[int]) -> int:
    """Format 1 did not record when a cluster merged: the first run that merged any after its last change.

    >>> merge_run(3, [2, 3, 5]), merge_run(8, [2, 5])
    (5, 8)
    """
    return next((run for run in merge_runs if run > last_change), last_change)


def convert_registry(out_dir: Path) -> Catalogue:
    """Write OUT/catalogue from OUT/registry (caller holds OUT's lock); the registry is not modified."""
    manifest, members, prototypes, pool = read_format1(out_dir / "registry")
    dim = int(manifest["embedding_dim"])
    cluster_ids, sums, sizes = prototypes["cluster_ids"], prototypes["sums"], prototypes["sizes"]
    exemplar_ids = prototypes.get("exemplar_ids", cluster_ids)
    unit_sums = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    exemplars = prototypes.get("exemplars", unit_sums).astype(np.float32)
    ex_keys = exemplar_keys(members, exemplar_ids)
    known = ex_keys != None  # noqa: E711 (an elementwise test on an object array)

    latest = members.drop_duplicates("key", keep="last").reset_index(drop=True)
    first_run = members.groupby("key")["run"].min()
    vectors = np.zeros((len(latest), dim), dtype=np.float32)
    has_vector = np.zeros(len(latest), dtype=bool)
    position = pd.Series(np.arange(len(latest)), index=latest["key"])
    for keys, embeddings in ((ex_keys[known], exemplars[known]), (pool["keys"].astype(object), pool["embeddings"])):
        rows = position.loc[list(keys)].to_numpy()
        vectors[rows], has_vector[rows] = embeddings, True
    images = pa.table(
        {
            "digest": pa.array(key_digests(latest["key"].tolist()), pa.uint64()),
            "key": latest["key"],
            "path": latest["path"],
            "source": latest["source"],
            "sha256": latest["sha256"],
            "run": pa.array(latest["key"].map(first_run).to_numpy(np.int64), pa.int64()),
            "cluster_id": pa.array(latest["cluster_id"].to_numpy(np.int64), pa.int64()),
            "similarity": pa.array(latest["similarity"].to_numpy(np.float64), pa.float64()),
            "changed_run": pa.array(latest["run"].to_numpy(np.int64), pa.int64()),
            "embedding": vector_column(vectors, pa.float32(), mask=~has_vector),
        },
        schema=images_schema(dim),
    )

    merged_into = {int(k): int(v) for k, v in manifest.get("merged_into", {}).items()}
    runs_of = members[members["cluster_id"] > 0].groupby("cluster_id")["run"].agg(["min", "max"])
    exemplar_digests = [key_digests([k for k in ex_keys[(exemplar_ids == c) & known]]) for c in cluster_ids]
    current_sizes = with_merged(sizes, cluster_ids, merged_into)
    current_sums = with_merged(sums, cluster_ids, merged_into)
    norms = np.linalg.norm(current_sums, axis=1)
    clusters = pa.table(
        {
            "id": pa.array(cluster_ids.astype(np.int64), pa.int64()),
            "state": pa.array(["automatic"] * len(cluster_ids), pa.string()),
            "name": pa.array([None] * len(cluster_ids), pa.string()),
            "size": pa.array(current_sizes.astype(np.int64), pa.int64()),
            "sum": vector_column(current_sums.astype(np.float64), pa.float64()),
            "cohesion": pa.array(norms / np.maximum(current_sizes, 1), pa.float64()),
            "created_run": pa.array(runs_of["min"].reindex(cluster_ids).to_numpy(np.int64), pa.int64()),
            "changed_run": pa.array(runs_of["max"].reindex(cluster_ids).to_numpy(np.int64), pa.int64()),
            "merged_into": pa.array([merged_into.get(int(c), 0) for c in cluster_ids], pa.int64()),
            "exemplars": pa.array(exemplar_digests, pa.list_(pa.uint64())),
        },
        schema=clusters_schema(dim),
    )
    times = {int(info["run"]): str(info.get("time", "")) for info in manifest["runs"]}
    merge_runs = [info["run"] for info in manifest["runs"] if info.get("merged", 0)]
    created = [
        Event(int(runs_of.loc[c, "min"]), "", "created", int(c), images=int(n))
        for c, n in zip(cluster_ids, sizes, strict=True)
    ]
    merges = [
        Event(
            merge_run(int(runs_of.loc[m, "max"]), merge_runs), "", "merged_into", m, o, int(sizes[cluster_ids == m][0])
        )
        for m, o in merged_into.items()
    ]
    in_order = sorted(created + merges, key=lambda event: (event.run, event.kind, event.cluster_id))
    events = events_table([replace(event, time=times.get(event.run, "")) for event in in_order])
    catalogue = Catalogue(
        directory=out_dir / CATALOGUE_DIR,
        run=int(manifest["run"]),
        model_id=manifest["model_id"],
        embedding_dim=dim,
    )
    change = CatalogueChange(
        images=images,
        clusters=clusters,
        events=events,
        runs=runs_table([{**info, "model_id": manifest["model_id"] or ""} for info in manifest["runs"]]),
        pool=key_digests(pool["keys"].astype(str).tolist()),
        next_cluster_id=int(manifest["next_cluster_id"]),
    )
    commit_change(catalogue, change, seed=0)
    log.info(
        "converted the format-1 registry in %s to a catalogue: %d images, %d clusters, %d merges, %d pool images",
        out_dir / "registry",
        images.num_rows,
        clusters.num_rows,
        len(merged_into),
        len(change.pool),
    )
    return catalogue
