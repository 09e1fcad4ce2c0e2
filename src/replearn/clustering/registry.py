"""The persistent cluster registry in OUT that keeps cluster ids stable across scheduled runs.

Layout (everything under OUT/registry/):

- manifest.json: the single commit point. It names the current prototypes and pool files and
  lists the member segments, and is replaced atomically (write, fsync, rename) as the last step
  of a run. Files a crashed run wrote before that step are simply not named by any manifest, so
  the previous registry stays intact and the next run overwrites them.
- members-<run>.parquet: one immutable segment per run, appended to the manifest's list and
  never rewritten: key, path, source, sha256, cluster_id, similarity, run. A later row for the
  same key overrides an earlier one (an unclustered image can join a new cluster later).
- keys-<run>.npy: the segment's keys as sorted 64-bit digests, so "seen before?" reads 8 bytes an
  image instead of every key string ever registered; a digest hit is confirmed against the segment.
- prototypes-<run>.npz: per cluster id, the sum of its members' embeddings and their count; the
  prototype is the normalised sum and the cohesion (mean similarity of members to the
  prototype) is |sum| / count, so neither needs the members' embeddings. Beside them, the
  exemplars: the embeddings of each cluster's latest cluster.exemplars members, which stand for
  the cluster when a later batch is clustered together with the clusters it is near.
- pool-<run>.npz: keys, sources and embeddings of the images still unclustered (cluster 0), which
  may form a cluster together with images of a later batch.

OUT/.lock is held with fcntl.flock for the whole run, so a second run on the same OUT is refused
instead of interleaving writes. The lock file is never deleted (deleting it would let two runs
lock two different files).
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
import pandas as pd

from replearn.atomic import atomic_path
from replearn.errors import UserError

REGISTRY_FORMAT = 1
MEMBER_COLUMNS = ["key", "path", "source", "sha256", "cluster_id", "similarity", "run"]


class RegistryLockedError(UserError):
    """Another run holds the lock on the same OUT folder."""


@contextmanager
def registry_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on OUT/.lock; a second holder gets RegistryLockedError.

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
            raise RegistryLockedError(
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


@dataclass
class Registry:
    """The committed state of OUT/registry: what the next run builds on."""

    directory: Path
    run: int = 0
    next_cluster_id: int = 1
    model_id: str | None = None
    embedding_dim: int | None = None
    cluster_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sums: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    exemplar_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    exemplars: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    # A cluster that a later run found to be one with another: id -> the id it joined. Both keep their ids.
    merged_into: dict[int, int] = field(default_factory=dict)
    pool_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    pool_sources: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    pool_embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    segments: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    # Size OUT/assignments.csv has once this state's rows are appended; another size means a run
    # crashed between commit and append (or someone edited the file), and the view is rebuilt.
    assignments_bytes: int = 0

    @property
    def prototypes(self) -> np.ndarray:
        """Unit-length mean embedding of each cluster, row i for cluster_ids[i]."""
        norms = np.linalg.norm(self.sums, axis=1, keepdims=True)
        return (self.sums / np.maximum(norms, 1e-12)).astype(np.float32)

    @property
    def cohesion(self) -> np.ndarray:
        """Mean similarity of each cluster's members to its prototype: |sum of members| / count."""
        return np.linalg.norm(self.sums, axis=1) / np.maximum(self.sizes, 1)

    @property
    def active(self) -> np.ndarray:
        """Rows of the clusters that new images can join: all but those merged into another."""
        return ~np.isin(self.cluster_ids, list(self.merged_into))

    def members(self) -> pd.DataFrame:
        """Current assignment of every image ever registered: the segments, last row per key wins."""
        frames = [pd.read_parquet(self.directory / name) for name in self.segments]
        if not frames:
            return pd.DataFrame({column: pd.Series(dtype=_member_dtype(column)) for column in MEMBER_COLUMNS})
        members = pd.concat(frames, ignore_index=True)
        return members.drop_duplicates("key", keep="last").reset_index(drop=True)

    def known(self, keys: Sequence[str]) -> np.ndarray:
        """Whether each key is registered: digests narrow every segment down, the key column confirms hits.

        The cost follows the batch and the number of runs, not the number of images ever registered:
        a segment's key strings are read only when one of its digests matches.
        """
        keys = list(keys)
        digests = key_digests(keys)
        found = np.zeros(len(keys), dtype=bool)
        for segment in self.segments:
            index_path = self.directory / keys_file_of(segment)
            if index_path.is_file():
                index = np.load(index_path)
                positions = np.minimum(np.searchsorted(index, digests), max(len(index) - 1, 0))
                hits = ~found & (index[positions] == digests) if len(index) else np.zeros(len(keys), dtype=bool)
                candidates: np.ndarray = np.flatnonzero(hits)
            else:  # a segment written before key digests existed
                candidates = np.flatnonzero(~found)
            if len(candidates):
                stored = set(pd.read_parquet(self.directory / segment, columns=["key"])["key"])
                found[candidates] = [keys[i] in stored for i in candidates]
        return found


def key_digests(keys: Sequence[str]) -> np.ndarray:
    """64-bit digests of image keys, for the sorted per-segment index.

    >>> key_digests(["a@1", "a@1", "b@2"]).tolist()[0] == key_digests(["a@1"]).tolist()[0]
    True
    """
    return np.array(
        [int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") for key in keys],
        dtype=np.uint64,
    )


def keys_file_of(segment: str) -> str:
    """The digest index beside a member segment: members-000007.parquet -> keys-000007.npy."""
    return segment.replace("members-", "keys-").replace(".parquet", ".npy")


def _member_dtype(column: str) -> str:
    return {"cluster_id": "int64", "run": "int64", "similarity": "float64"}.get(column, "object")


def load_registry(out_dir: Path) -> Registry:
    """The registry committed in OUT/registry, or an empty one when there is none yet."""
    directory = out_dir / "registry"
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        return Registry(directory=directory)
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != REGISTRY_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {REGISTRY_FORMAT}")
        with np.load(directory / manifest["prototypes"]) as prototypes:
            cluster_ids, sums, sizes = prototypes["cluster_ids"], prototypes["sums"], prototypes["sizes"]
            # A registry from before exemplars: each cluster's prototype stands in for its members.
            exemplar_ids = prototypes.get("exemplar_ids", cluster_ids)
            unit_sums = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
            exemplars = prototypes.get("exemplars", unit_sums)
        with np.load(directory / manifest["pool"], allow_pickle=False) as pool:
            pool_keys, pool_embeddings = pool["keys"].astype(object), pool["embeddings"]
            pool_sources = pool["sources"].astype(object) if "sources" in pool else None
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cluster registry {manifest_path} is unreadable ({error}); it was not modified") from None
    registry = Registry(
        directory=directory,
        run=int(manifest["run"]),
        next_cluster_id=int(manifest["next_cluster_id"]),
        model_id=manifest["model_id"],
        embedding_dim=int(manifest["embedding_dim"]),
        cluster_ids=cluster_ids,
        sums=sums,
        sizes=sizes,
        pool_keys=pool_keys,
        pool_embeddings=pool_embeddings,
        segments=list(manifest["segments"]),
        runs=list(manifest["runs"]),
        assignments_bytes=int(manifest.get("assignments_bytes", -1)),
        exemplar_ids=exemplar_ids,
        exemplars=exemplars.astype(np.float32),
        merged_into={int(k): int(v) for k, v in manifest.get("merged_into", {}).items()},
    )
    if pool_sources is None:  # a pool written before sources were kept with it
        pool_sources = registry.members().set_index("key").loc[pool_keys, "source"].to_numpy(dtype=object)
    registry.pool_sources = pool_sources
    return registry


def commit_registry(registry: Registry, new_members: pd.DataFrame, run_info: dict[str, Any]) -> None:
    """Write this run's segment, prototypes and pool under new names, then switch the manifest to them.

    `registry` already holds the new state (run, ids, sums, pool); `new_members` are the rows this
    run adds. Until the manifest is replaced, readers (and a crash) see the previous registry.
    """
    directory = registry.directory
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"{registry.run:06d}"
    segment = f"members-{tag}.parquet"
    prototypes = f"prototypes-{tag}.npz"
    pool = f"pool-{tag}.npz"
    keys = keys_file_of(segment)
    with atomic_path(directory / segment) as temporary:
        new_members[MEMBER_COLUMNS].to_parquet(temporary, index=False)
    with atomic_path(directory / keys) as temporary, temporary.open("wb") as handle:
        np.save(handle, np.sort(key_digests(new_members["key"].tolist())))
    with atomic_path(directory / prototypes) as temporary, temporary.open("wb") as handle:
        np.savez(
            handle,
            cluster_ids=registry.cluster_ids,
            sums=registry.sums,
            sizes=registry.sizes,
            exemplar_ids=registry.exemplar_ids,
            exemplars=registry.exemplars,
        )
    with atomic_path(directory / pool) as temporary, temporary.open("wb") as handle:
        np.savez(
            handle,
            keys=registry.pool_keys.astype(str),
            sources=registry.pool_sources.astype(str),
            embeddings=registry.pool_embeddings,
        )
    registry.segments.append(segment)
    registry.runs.append(run_info)
    manifest = {
        "format": REGISTRY_FORMAT,
        "run": registry.run,
        "next_cluster_id": registry.next_cluster_id,
        "model_id": registry.model_id,
        "embedding_dim": registry.embedding_dim,
        "prototypes": prototypes,
        "pool": pool,
        "segments": registry.segments,
        "runs": registry.runs,
        "assignments_bytes": registry.assignments_bytes,
        "merged_into": {str(k): v for k, v in sorted(registry.merged_into.items())},
    }
    _fsync_files(directory / segment, directory / keys, directory / prototypes, directory / pool)
    with atomic_path(directory / "manifest.json") as temporary:
        temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        _fsync_files(temporary)
    segments_and_keys = {name for segment in registry.segments for name in (segment, keys_file_of(segment))}
    remove_orphans(directory, keep={prototypes, pool, *segments_and_keys, "manifest.json"})


def _fsync_files(*paths: Path) -> None:
    """Make file contents durable before the manifest that names them, so a power cut cannot reorder them."""
    for path in paths:
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def remove_orphans(directory: Path, keep: set[str]) -> None:
    """Delete superseded prototypes/pool versions and leftovers of crashed runs; segments stay forever."""
    for path in directory.iterdir():
        if path.name not in keep and path.suffix in (".npz", ".npy", ".parquet", ".tmp"):
            path.unlink(missing_ok=True)
