"""The cluster catalogue in OUT/catalogue: five tables, a pool, and the manifest that commits them.

- images: one row per image (key, path, source, sha256, first run, current cluster id, similarity
  to its cluster's prototype, the run that last changed it, its embedding), keyed by a 64-bit
  digest of the key, with a nearest-images index per segment (indexes.py);
- clusters: one row per cluster id (state, name, size, the member sum its prototype and cohesion
  come from, created and last changed run, the id it was merged into, its latest members as
  exemplars), keyed by id, with a nearest-prototype index per segment (indexes.py). Size, sum
  and exemplars cover the clusters merged into it too: every image whose current id it is;
- events: append-only, one row per change (run, time, actor, kind, cluster ids, images);
- runs: append-only, one row per run;
- rejections: one row per image a person rejected from a cluster (every cluster it was rejected
  from), keyed by the image's digest, so that no run puts it back;
- promotions: one row per image that `clusters promote` put into the training data (promotion.py),
  keyed by the image's digest, so that no promotion copies it twice.

Runs, a person's corrections (corrections.py) and undo are transactions: each takes the next number
of the `run` counter (the events table orders them all by it; the runs table lists the runs) and
commits through commit_change, which keeps the state before it in the manifest as the undo point.

Each table is a list of immutable segments (segments.py); a run appends one segment per table and
replaces the small pool file (the digests of the images still unclustered, at most
cluster.pool_max). manifest.json names the live files and is replaced atomically as the last
step: files a crashed run wrote are named by no manifest and are removed by the next one, so the
previous catalogue stays intact. Compaction (four segments of one level into one of the next) is a
commit of its own, after the run's; it keeps the undo point, whose files stay until the next
transaction replaces it.

OUT/.lock is held with fcntl.flock for a run or a correction, so a second writer on the same OUT
is refused instead of interleaving writes. The lock file is never deleted (deleting it would let two runs lock two
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from replearn.atomic import atomic_path
from replearn.catalogue.indexes import (
    INDEX_DIRS,
    index_path_of,
    search_index,
    write_image_index,
    write_prototype_index,
)
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
TABLE_KEYS: dict[str, str | None] = {
    "images": "digest",
    "clusters": "id",
    "events": None,
    "runs": None,
    "rejections": "digest",
    "promotions": "digest",
}
# What an undo puts back; the events and runs tables are logs: they keep what happened, undo included.
# So is promotions: an undo never takes files back out of the training data, so they stay promoted.
RESTORED_BY_UNDO = ("images", "clusters", "rejections")

# A cluster's state: made and revised by runs, or confirmed by a person (named, confirmed or corrected).
AUTOMATIC = "automatic"
CONFIRMED = "confirmed"


class CatalogueLockedError(UserError):
    """Another run or correction holds the lock on the same OUT folder."""


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
                f"another process (pid {holder}), a `replearn cluster` run or a `replearn clusters` correction, "
                f"is writing to {out_dir}; it holds {lock_path}. Wait for it to finish and try again"
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
            ("exemplars", pa.list_(pa.uint64())),
        ]
    )


REJECTIONS_SCHEMA = pa.schema([("digest", pa.uint64()), ("clusters", pa.list_(pa.int64())), ("run", pa.int64())])
# class: the folder it went to; file: its path in DATA_DIR, null when its content was there already.
PROMOTIONS_SCHEMA = pa.schema(
    [
        ("digest", pa.uint64()),
        ("cluster_id", pa.int64()),
        ("class", pa.string()),
        ("file", pa.string()),
        ("run", pa.int64()),
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
        ("name", pa.string()),  # the name a person gave (`named`); events written before it read as null
    ]
)


def table_schema(name: str, dim: int) -> pa.Schema:
    """The schema of a catalogue table (the images' embeddings and the clusters' sums are dim wide)."""
    schemas = {
        "images": images_schema(dim),
        "clusters": clusters_schema(dim),
        "events": EVENTS_SCHEMA,
        "runs": RUNS_SCHEMA,
        "rejections": REJECTIONS_SCHEMA,
        "promotions": PROMOTIONS_SCHEMA,
    }
    return schemas[name]


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
    name: str | None = None


def now() -> str:
    """The time of an event or a run, as the events and runs tables store it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    """What one transaction adds: a segment per table (None: unchanged), the new pool and counters."""

    images: pa.Table | None
    clusters: pa.Table | None
    events: pa.Table | None
    runs: pa.Table | None
    pool: np.ndarray
    next_cluster_id: int
    rejections: pa.Table | None = None
    promotions: pa.Table | None = None


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
    undo: dict[str, Any] | None = None  # {"run": the transaction it undoes, "state": restorable_state before it}
    assigned: int | None = None  # images in a cluster (id > 0); None: a manifest from before it was kept
    committed: dict[str, Any] = field(default_factory=dict)  # restorable_state as last loaded or committed

    def __post_init__(self) -> None:
        for name, key in TABLE_KEYS.items():
            self.tables.setdefault(name, Table(name=name, key=key, root=self.directory))
        self.committed = restorable_state(self)

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
        """Images in a cluster (id > 0): the manifest's count, kept by every commit.

        A catalogue written before the manifest kept it is counted once from its images table.
        """
        if self.assigned is None:
            images = self.images.read_all() if self.images.segments else None
            self.assigned = int((column_array(images, "cluster_id") > 0).sum()) if images is not None else 0
        return self.assigned

    def rejected_from(self, digests: np.ndarray) -> list[frozenset[int]]:
        """Every cluster a person rejected each image from (empty for most): a run never puts it back there."""
        table = self.tables["rejections"]
        where, rows = table.find(np.asarray(digests, dtype=np.uint64))
        rejected: list[frozenset[int]] = [frozenset()] * len(where)
        found = np.flatnonzero(where >= 0)
        if len(found):
            clusters = table.take(where[found], rows[found]).column("clusters").to_pylist()
            for position, ids in zip(found, clusters, strict=True):
                rejected[position] = frozenset(ids)
        return rejected

    def nearest_clusters(self, embeddings: np.ndarray, nprobe: int) -> np.ndarray:
        """The id of the nearest active cluster prototype of each embedding (0 when there is none)."""
        return self.top_clusters(embeddings, 1, nprobe)[0][:, 0]

    def top_clusters(self, embeddings: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, similarities) of the k nearest active cluster prototypes of each embedding, best first.

        Each clusters segment's index gives its k nearest rows, kept only where a row is still its
        cluster's newest (so a cluster appears once); the best k over all segments win, an earlier
        segment first on a tie. Id 0 and similarity -inf fill the places of clusters that do not exist.
        """
        n = len(embeddings)
        all_ids: list[np.ndarray] = [np.zeros((n, 0), dtype=np.int64)]
        all_similarities: list[np.ndarray] = [np.zeros((n, 0), dtype=np.float32)]
        table = self.clusters
        for index, segment in enumerate(table.segments):
            similarities, rows = search_index(index_path_of(self.directory, segment.file), embeddings, k, nprobe)
            hit = rows >= 0
            ids = np.zeros(rows.shape, dtype=np.int64)
            if hit.any():
                ids[hit] = column_array(table.segment(index), "id")[rows[hit]]
                newest, _ = table.find(ids[hit])
                live = np.zeros(rows.shape, dtype=bool)
                live[hit] = newest == index
                ids[~live] = 0
            all_ids.append(ids)
            all_similarities.append(np.where(ids > 0, similarities, -np.inf).astype(np.float32))
        candidates, scores = np.concatenate(all_ids, axis=1), np.concatenate(all_similarities, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_ids, best = np.take_along_axis(candidates, order, 1), np.take_along_axis(scores, order, 1)
        missing = k - best_ids.shape[1]  # fewer candidates than k: no segment yet
        if missing:
            best_ids = np.pad(best_ids, ((0, 0), (0, missing)))
            best = np.pad(best, ((0, 0), (0, missing)), constant_values=-np.inf)
        return best_ids, best

    def last_threshold(self) -> float:
        """The threshold of the catalogue's last run: what an image must reach to join a confirmed cluster."""
        runs = self.tables["runs"]
        if not runs.segments:
            raise UserError(f"{self.directory.parent} holds no cluster run yet, so no threshold")
        return float(column_array(runs.segment(len(runs.segments) - 1), "threshold")[-1])

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
            "undo": self.undo,
            "assigned": self.assigned,
        }


def restorable_state(catalogue: Catalogue) -> dict[str, Any]:
    """What an undo puts back: the model, the pool and the segments of the tables that are not logs."""
    return {
        "model_id": catalogue.model_id,
        "embedding_dim": catalogue.embedding_dim,
        "pool": catalogue.pool_file,
        "assigned": catalogue.assigned,
        "tables": {name: [s.to_json() for s in catalogue.tables[name].segments] for name in RESTORED_BY_UNDO},
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
        # A table the manifest does not name (rejections, before corrections existed) is empty.
        named = manifest["tables"]
        tables = {
            name: Table(name=name, key=key, root=directory, segments=[Segment(**s) for s in named.get(name, [])])
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
        undo=manifest.get("undo"),
        assigned=manifest.get("assigned"),
    )


def write_table_segment(catalogue: Catalogue, name: str, rows: pa.Table, level: int, seed: int) -> Segment:
    """Write rows as a new segment of table `name` (sorted by its key; clusters and images with their index)."""
    table = catalogue.tables[name]
    file = catalogue.segment_name(name)
    rows = sort_by_key(rows, table.key)
    write_segment(catalogue.directory / file, rows)
    dim = catalogue.embedding_dim or 0
    if name == "clusters":
        sums = vectors_of(rows, "sum", dim)
        active = (column_array(rows, "merged_into") == 0) & (column_array(rows, "size") > 0)
        write_prototype_index(index_path_of(catalogue.directory, file), sums, active, seed)
    elif name == "images":
        embedded = rows.column("embedding").is_valid().to_numpy(zero_copy_only=False)
        embeddings, cluster_ids = vectors_of(rows, "embedding", dim), column_array(rows, "cluster_id")
        write_image_index(index_path_of(catalogue.directory, file), embeddings, embedded, cluster_ids, seed)
    return Segment(file=file, rows=rows.num_rows, level=level)


def commit_manifest(catalogue: Catalogue) -> None:
    """Replace manifest.json with the catalogue's state (the commit point), then drop unnamed files."""
    with atomic_path(catalogue.directory / "manifest.json") as temporary:
        temporary.write_text(json.dumps(catalogue.manifest(), indent=2, sort_keys=True) + "\n")
        fsync_file(temporary)
    catalogue.committed = restorable_state(catalogue)
    remove_orphans(catalogue)


def live_files(catalogue: Catalogue) -> set[str]:
    """The files the manifest names: its tables, indexes and pool, and those of its undo point."""
    files = {"manifest.json"}
    states = [catalogue.manifest()] + ([catalogue.undo["state"]] if catalogue.undo else [])
    for state in states:
        if state["pool"]:
            files.add(state["pool"])
        for name, segments in state["tables"].items():
            for segment in segments:
                files.add(segment["file"])
                if name in INDEX_DIRS:  # an images segment may have none; keeping a name costs nothing
                    index = index_path_of(catalogue.directory, segment["file"])
                    files.add(str(index.relative_to(catalogue.directory)))
    return files


def remove_orphans(catalogue: Catalogue) -> None:
    """Delete what no manifest names: superseded segments and pools, and files of crashed runs."""
    keep = live_files(catalogue)
    directory = catalogue.directory
    folders = [
        directory,
        *(directory / folder for folder in INDEX_DIRS.values()),
        *(directory / name for name in TABLE_KEYS),
    ]
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and str(path.relative_to(directory)) not in keep:
                path.unlink(missing_ok=True)


def assigned_delta(catalogue: Catalogue, rows: pa.Table) -> int:
    """How many more images are in a cluster once `rows` replace the images' current rows (new ones count from 0)."""
    where, positions = catalogue.images.find(column_array(rows, "digest"))
    before = np.zeros(len(where), dtype=bool)
    if (where >= 0).any():
        before[where >= 0] = (
            column_array(catalogue.images.take(where[where >= 0], positions[where >= 0]), "cluster_id") > 0
        )
    return int((column_array(rows, "cluster_id") > 0).sum() - before.sum())


def commit_change(catalogue: Catalogue, change: CatalogueChange, seed: int) -> None:
    """Write a transaction's segments and pool under new names, then switch the manifest to them.

    Every transaction (a run, a correction, an undo, a migration) commits here, once, so the state
    it started from (as loaded, or as the last commit or compaction left it) becomes the undo point.
    The caller advances `catalogue.run` to the transaction's number first; compaction may follow.
    """
    catalogue.undo = {"run": catalogue.run, "state": catalogue.committed}
    if change.images is not None and change.images.num_rows:
        catalogue.assigned = catalogue.assigned_images() + assigned_delta(catalogue, change.images)
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
