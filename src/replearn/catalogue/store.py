"""The cluster catalogue in OUT/catalogue: four tables, a pool, and the manifest that commits them.

- images: one row per image (key, path, source, sha256, first run, current cluster id, similarity
  to its cluster's prototype, the run that last changed it, its embedding), keyed by a 64-bit
  digest of the key;
- clusters: one row per cluster id (state, name, size, the member sum its prototype and cohesion
  come from, created and last changed run, the id it was merged into, the members of the clusters
  merged into it (whose current id is its own), its latest members as exemplars), keyed by id,
- events: append-only, one row per change (run, time, actor, kind, cluster ids, images);
- runs: append-only, one row per run.

Each table is a list of immutable segments (segments.py); a run appends one segment per table and
replaces the small pool file (the digests of the images still unclustered, at most
cluster.pool_max). manifest.json names the live files and is replaced atomically as the last
step: files a crashed run wrote are named by no manifest and are removed by the next one, so the
previous catalogue stays intact. Compaction (four segments of one level into one of the next) is a
commit of its own, after the run's.

OUT/.lock is held with fcntl.flock for a run, so a second run on the same OUT is refused instead
of interleaving writes. The lock file is never deleted (deleting it would let two runs lock two
different files).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from replearn.atomic import atomic_path
from replearn.catalogue.prototypes import INDEX_DIR, index_path_of, search_prototype_index, write_prototype_index
from replearn.catalogue.segments import (
    SEGMENT_SUFFIX,
    Segment,
    Table,
    column_array,
    due_merge,
    fsync_file,
    merge_tables,
    sort_by_key,
    vectors_of,
    write_segment,
)
from replearn.errors import UserError

CATALOGUE_FORMAT = 2
CATALOGUE_DIR = "catalogue"
TABLE_KEYS: dict[str, str | None] = {"images": "digest", "clusters": "id", "events": None, "runs": None}


class CatalogueLockedError(UserError):
    """Another run holds the lock on the same OUT folder."""


@contextmanager
def catalogue_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on OUT/.lock; a second holder gets CatalogueLockedError.

    The kernel releases a flock when its process dies, so a crashed run never leaves OUT locked.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir / ".lock"
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise CatalogueLockedError(
                f"another `replearn cluster` run (pid {holder}) is writing to {out_dir}; "
                f"it holds {lock_path}. Wait for it to finish, or use another OUT folder"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def key_digests(keys: Sequence[str]) -> np.ndarray:
    """64-bit digests of image keys: the images table's sort key (a hit is confirmed against the key).

    >>> key_digests(["a@1", "a@1", "b@2"]).tolist()[0] == key_digests(["a@1"]).tolist()[0]
    True
    """
    return np.array(
        [int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") for key in keys],
        dtype=np.uint64,
    )


def images_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("digest", pa.uint64()),
            ("key", pa.string()),
            ("path", pa.string()),
            ("source", pa.string()),
            ("sha256", pa.string()),
            ("run", pa.int64()),
            ("cluster_id", pa.int64()),
            ("similarity", pa.float64()),
            ("changed_run", pa.int64()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ]
    )


def clusters_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("id", pa.int64()),
            ("state", pa.string()),
            ("name", pa.string()),
            ("size", pa.int64()),
            ("sum", pa.list_(pa.float64(), dim)),
            ("cohesion", pa.float64()),
            ("created_run", pa.int64()),
            ("changed_run", pa.int64()),
            ("merged_into", pa.int64()),
            ("merged_members", pa.int64()),
            ("exemplars", pa.list_(pa.uint64())),
        ]
    )


EVENTS_SCHEMA = pa.schema(
    [
        ("run", pa.int64()),
        ("time", pa.string()),
        ("actor", pa.string()),
        ("kind", pa.string()),
        ("cluster_id", pa.int64()),
        ("other_id", pa.int64()),
        ("images", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Event:
    """One row of the events table: `kind` happened to `cluster_id` (with `other_id`, 0 if none) in `run`."""

    run: int
    time: str
    kind: str
    cluster_id: int
    other_id: int = 0
    images: int = 0
    actor: str = "run"


def events_table(events: list[Event]) -> pa.Table:
    return pa.Table.from_pylist([vars(event) for event in events], EVENTS_SCHEMA)


RUN_COUNTS = (
    "new_images",
    "assigned_to_existing",
    "new_clusters",
    "earlier_unclustered_joined",
    "unclustered",
    "merged",
    "retired_from_pool",
    "split",
    "dissolved",
    "changed_ids",
    "assigned",
)
RUNS_SCHEMA = pa.schema(
    [("run", pa.int64()), ("time", pa.string()), ("threshold", pa.float64()), ("model_id", pa.string())]
    + [(name, pa.int64()) for name in RUN_COUNTS]
    + [("churn", pa.float64())]
)


def runs_table(records: list[dict[str, Any]]) -> pa.Table:
    """Rows of the runs table from dicts with its columns (others are ignored, missing ones are null)."""
    return pa.Table.from_pylist([{name: r.get(name) for name in RUNS_SCHEMA.names} for r in records], RUNS_SCHEMA)


@dataclass
class CatalogueChange:
    """What one run adds: a segment per table (None: unchanged), the new pool and counters."""

    images: pa.Table | None
    clusters: pa.Table | None
    events: pa.Table | None
    runs: pa.Table | None
    pool: np.ndarray
    next_cluster_id: int


@dataclass
class Catalogue:
    """The committed state of OUT/catalogue: what the next run builds on."""

    directory: Path
    run: int = 0
    next_cluster_id: int = 1
    next_segment: int = 1
    model_id: str | None = None
    embedding_dim: int | None = None
    pool: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    pool_file: str | None = None
    tables: dict[str, Table] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, key in TABLE_KEYS.items():
            self.tables.setdefault(name, Table(name=name, key=key, root=self.directory))

    @property
    def images(self) -> Table:
        return self.tables["images"]

    @property
    def clusters(self) -> Table:
        return self.tables["clusters"]

    def known(self, keys: Sequence[str]) -> np.ndarray:
        """Whether each key is in the images table: a digest search per segment, confirmed on the key."""
        keys = list(keys)
        where, rows = self.images.find(key_digests(keys))
        found = where >= 0
        if found.any():
            stored = self.images.take(where[found], rows[found]).column("key").to_pylist()
            found[np.flatnonzero(found)] = [a == b for a, b in zip(stored, np.array(keys)[found], strict=True)]
        return found

    def image_rows(self, digests: np.ndarray) -> pa.Table:
        """The current rows of images by digest (all must exist), in the order given."""
        where, rows = self.images.find(digests)
        if (where < 0).any():
            raise UserError(f"the catalogue in {self.directory} names images its images table lacks; it is damaged")
        return self.images.take(where, rows)

    def cluster_rows(self, ids: np.ndarray) -> pa.Table:
        """The current rows of clusters by id (all must exist), in the order given."""
        where, rows = self.clusters.find(np.asarray(ids, dtype=np.int64))
        if (where < 0).any():
            raise UserError(f"the catalogue in {self.directory} names clusters its clusters table lacks; it is damaged")
        return self.clusters.take(where, rows)

    def assigned_images(self) -> int:
        """Images in a cluster (id > 0) after the last run: its runs row says, read in O(1).

        A catalogue written before runs counted them is counted once from its images table.
        """
        runs = self.tables["runs"]
        if runs.segments:
            last = runs.segment(len(runs.segments) - 1)
            if "assigned" in last.column_names and last.column("assigned")[-1].is_valid:
                return int(last.column("assigned")[-1].as_py())
        if not self.images.segments:
            return 0
        return int((column_array(self.images.read_all(), "cluster_id") > 0).sum())

    def nearest_clusters(self, embeddings: np.ndarray, nprobe: int) -> np.ndarray:
        """The id of the nearest active cluster prototype of each embedding (0 when there is none).

        Each clusters segment's index answers for the rows that are still their cluster's newest;
        the best of those over all segments wins.
        """
        best_ids = np.zeros(len(embeddings), dtype=np.int64)
        best = np.full(len(embeddings), -np.inf, dtype=np.float32)
        table = self.clusters
        for index, segment in enumerate(table.segments):
            similarities, rows = search_prototype_index(index_path_of(self.directory, segment.file), embeddings, nprobe)
            hit = rows >= 0
            if not hit.any():
                continue
            ids = np.zeros(rows.shape, dtype=np.int64)
            ids[hit] = column_array(table.segment(index), "id")[rows[hit]]
            newest, _ = table.find(ids[hit])
            live = np.zeros(rows.shape, dtype=bool)
            live[hit] = newest == index
            similarities = np.where(live, similarities, -np.inf)
            column = similarities.argmax(axis=1)
            top = similarities[np.arange(len(embeddings)), column]
            better = top > best
            best[better] = top[better]
            best_ids[better] = ids[np.arange(len(embeddings)), column][better]
        return best_ids

    def segment_name(self, table: str) -> str:
        name = f"{table}/seg-{self.next_segment:06d}{SEGMENT_SUFFIX}"
        self.next_segment += 1
        return name

    def manifest(self) -> dict[str, Any]:
        return {
            "format": CATALOGUE_FORMAT,
            "run": self.run,
            "next_cluster_id": self.next_cluster_id,
            "next_segment": self.next_segment,
            "model_id": self.model_id,
            "embedding_dim": self.embedding_dim,
            "pool": self.pool_file,
            "tables": {name: [segment.to_json() for segment in table.segments] for name, table in self.tables.items()},
        }


def load_catalogue(out_dir: Path) -> Catalogue:
    """The catalogue committed in OUT/catalogue, or an empty one when there is none yet."""
    directory = out_dir / CATALOGUE_DIR
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return Catalogue(directory=directory)
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != CATALOGUE_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {CATALOGUE_FORMAT}")
        pool = np.load(directory / manifest["pool"]) if manifest["pool"] else np.zeros(0, dtype=np.uint64)
        tables = {
            name: Table(name=name, key=key, root=directory, segments=[Segment(**s) for s in manifest["tables"][name]])
            for name, key in TABLE_KEYS.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cluster catalogue {manifest_path} is unreadable ({error}); it was not modified") from None
    return Catalogue(
        directory=directory,
        run=int(manifest["run"]),
        next_cluster_id=int(manifest["next_cluster_id"]),
        next_segment=int(manifest["next_segment"]),
        model_id=manifest["model_id"],
        embedding_dim=manifest["embedding_dim"],
        pool=pool,
        pool_file=manifest["pool"],
        tables=tables,
    )


def write_table_segment(catalogue: Catalogue, name: str, rows: pa.Table, level: int, seed: int) -> Segment:
    """Write rows as a new segment of table `name` (sorted by its key; clusters with their index)."""
    table = catalogue.tables[name]
    file = catalogue.segment_name(name)
    rows = sort_by_key(rows, table.key)
    write_segment(catalogue.directory / file, rows)
    if name == "clusters":
        dim = catalogue.embedding_dim or 0
        sums = vectors_of(rows, "sum", dim)
        active = (column_array(rows, "merged_into") == 0) & (column_array(rows, "size") > 0)
        write_prototype_index(index_path_of(catalogue.directory, file), sums, active, seed)
    return Segment(file=file, rows=rows.num_rows, level=level)


def commit_manifest(catalogue: Catalogue) -> None:
    """Replace manifest.json with the catalogue's state (the commit point), then drop unnamed files."""
    with atomic_path(catalogue.directory / "manifest.json") as temporary:
        temporary.write_text(json.dumps(catalogue.manifest(), indent=2, sort_keys=True) + "\n")
        fsync_file(temporary)
    remove_orphans(catalogue)


def live_files(catalogue: Catalogue) -> set[str]:
    files = {"manifest.json"}
    if catalogue.pool_file:
        files.add(catalogue.pool_file)
    for table in catalogue.tables.values():
        for segment in table.segments:
            files.add(segment.file)
            if table.name == "clusters":
                files.add(str(index_path_of(catalogue.directory, segment.file).relative_to(catalogue.directory)))
    return files


def remove_orphans(catalogue: Catalogue) -> None:
    """Delete what no manifest names: superseded segments and pools, and files of crashed runs."""
    keep = live_files(catalogue)
    directory = catalogue.directory
    folders = [directory, directory / INDEX_DIR, *(directory / name for name in TABLE_KEYS)]
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and str(path.relative_to(directory)) not in keep:
                path.unlink(missing_ok=True)


def commit_change(catalogue: Catalogue, change: CatalogueChange, seed: int) -> None:
    """Write the run's segments and pool under new names, then switch the manifest to them."""
    catalogue.directory.mkdir(parents=True, exist_ok=True)
    for name in TABLE_KEYS:
        rows = getattr(change, name)
        if rows is not None and rows.num_rows:
            (catalogue.directory / name).mkdir(exist_ok=True)
            catalogue.tables[name].segments.append(write_table_segment(catalogue, name, rows, level=0, seed=seed))
    pool_file = f"pool-{catalogue.run:06d}.npy"
    with atomic_path(catalogue.directory / pool_file) as temporary, temporary.open("wb") as handle:
        np.save(handle, change.pool.astype(np.uint64))
        handle.flush()
        os.fsync(handle.fileno())
    catalogue.pool, catalogue.pool_file = change.pool, pool_file
    catalogue.next_cluster_id = change.next_cluster_id
    commit_manifest(catalogue)


def compact(catalogue: Catalogue, seed: int) -> int:
    """Merge the newest segments of each table while FANOUT of one level stand in a row; returns merges.

    Each merge is its own commit: the merged segment is written first, the manifest then names it
    instead of its parts, and only then are the parts deleted, so a crash at any point leaves a
    catalogue that reads the same.
    """
    merges = 0
    for name, table in catalogue.tables.items():
        while count := due_merge(table.segments):
            parts = table.segments[-count:]
            merged = merge_tables([table.segment(len(table.segments) - count + i) for i in range(count)], table.key)
            segment = write_table_segment(catalogue, name, merged, level=parts[0].level + 1, seed=seed)
            table.segments[-count:] = [segment]
            commit_manifest(catalogue)
            merges += 1
    return merges
