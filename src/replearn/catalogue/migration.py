"""A new model migrates the catalogue: every id, name, state and merge survives it.

Embeddings of two models are not comparable, so when a new model first meets an OUT its catalogue
is remade in the new model's space, once:

- every image whose file can still be read (its `source`) with the content it was keyed by is
  embedded again with the torch-free ONNX embedder, behind a progress bar;
- an image whose file is gone or changed keeps its row and its cluster id. Its embedding becomes
  null (an old-space vector beside new-space ones would be compared wrongly) and its similarity
  NaN; it leaves the exemplars and the pool, and still counts in its cluster's size (so it lowers
  the cohesion: a cluster that lost files shows as one to review). A cluster none of whose files
  can be read keeps its id, name and state but has no prototype, so no new image joins it;
- each cluster's member sum, cohesion and exemplars (its latest re-embedded members) are rebuilt,
  and the images and clusters tables are rewritten as one fresh segment each, with the prototype
  index; the other tables keep their segments;
- the events table gets one `migrated` event per cluster (actor `run`, images: its members embedded
  again), the runs table a row for the migration with the new model and threshold, and
  OUT/runs/run-NNNNNN/migration.json the summary.

It is one commit: the manifest is switched once, after every file is written, so a crash leaves
the old catalogue or the migrated one, never a mix, and the next run migrates again. It costs
O(catalogue) once per model, almost all of it embedding (docs/cluster.md, "New model").

Agreement is the share of re-embedded clustered images whose nearest prototype in the new space
is their own cluster's, merges followed: how much of the old clustering the new model repeats.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
from rich.console import RenderableType

from replearn.artifacts.hashing import sha256_file
from replearn.atomic import atomic_directory, write_json_atomic
from replearn.catalogue.read import follow_merges
from replearn.catalogue.segments import Table, column_array, merge_tables, vector_column
from replearn.catalogue.store import (
    Catalogue,
    CatalogueChange,
    Event,
    clusters_schema,
    commit_change,
    compact,
    events_table,
    images_schema,
    runs_table,
    write_table_segment,
)
from replearn.config import Config
from replearn.console import results_table
from replearn.embedding.batches import Embedder, embed_paths
from replearn.errors import UserError
from replearn.similarity import nearest, unit_rows

if TYPE_CHECKING:
    from replearn.embedding.onnx import OnnxEmbedder  # imported by the caller: onnxruntime loads only when used

log = logging.getLogger(__name__)

MIGRATION_FILE = "migration.json"
TABLES_REMADE = ("images", "clusters")  # the others (events, runs, ...) hold nothing of the embedding space


@dataclass
class Migration:
    """What a migration did: how many images were embedded again, how many kept their id without one."""

    run: int
    old_model: str
    new_model: str
    images: int
    embedded: int
    missing: int  # files gone or changed: id kept, no embedding in the new space
    clusters: int
    agreement: float  # NaN when no clustered image could be embedded again
    seconds: float
    embed_seconds: float

    def __rich__(self) -> RenderableType:
        per_thousand = 1000 * self.seconds / max(self.images, 1)
        return results_table(
            f"migrated the catalogue (run {self.run}) from model {self.old_model[:19]} to {self.new_model[:19]}",
            ("images", "embedded again", "files gone or changed", "clusters", "agreement", "s per 1,000 images"),
            (
                f"{self.images:,}",
                f"{self.embedded:,}",
                f"{self.missing:,}",
                f"{self.clusters:,}",
                f"{self.agreement:.3f}",
                f"{per_thousand:.2f}",
            ),
        )


class HashingReader:
    """An embedder that records the sha256 of each file it reads, so a file changed since it was keyed is told apart."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.hashes: dict[Path, str] = {}

    def load(self, path: Path) -> np.ndarray:
        self.hashes[path] = sha256_file(path)
        return self.embedder.load(path)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        return self.embedder.embed_arrays(batch)


def re_embed(
    embedder: OnnxEmbedder, sources: list[str], sha256: list[str], batch_size: int, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """(positions, unit embeddings) of the images whose file still holds the content they were keyed by.

    Each distinct file is read once: a path whose content changed between runs is two images, and
    only the one with the current content is embedded again.
    """
    codes, unique = pd.factorize(pd.Series(sources, dtype=object).fillna(""))
    reader = HashingReader(embedder)
    paths = [Path(source) for source in unique]
    done = embed_paths(reader, paths, batch_size, workers, "skip", "re-embedding the catalogue")
    vectors = np.zeros((len(paths), embedder.metadata.embedding_dim), dtype=np.float32)
    if done.kept:
        vectors[done.kept] = unit_rows(done.embeddings)
    current = np.full(len(paths), "", dtype=object)
    current[done.kept] = [reader.hashes[paths[i]] for i in done.kept]
    positions = np.flatnonzero(current[codes] == np.asarray(sha256, dtype=object))
    return positions, vectors[codes[positions]]


def agreement(
    embeddings: np.ndarray,
    cluster_ids: np.ndarray,
    prototype_ids: np.ndarray,
    prototypes: np.ndarray,
    merged_into: dict[int, int],
    memory_mb: float,
) -> float:
    """Share of the images whose nearest prototype is their own cluster's, merges followed (NaN for none).

    >>> prototypes = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> images = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.8, 0.2]], dtype=np.float32)
    >>> agreement(images, np.array([1, 2, 3, 3]), np.array([1, 2]), prototypes, {3: 2}, memory_mb=1)
    0.75
    """
    if len(cluster_ids) == 0:
        return float("nan")
    rows, _ = nearest(unit_rows(embeddings).astype(np.float32), prototypes, memory_mb)
    placed = prototype_ids[rows] if len(prototype_ids) else np.zeros(len(cluster_ids), dtype=np.int64)
    return float(np.mean(placed == follow_merges(cluster_ids, merged_into)))


def current_rows(table: Table, vector: str, schema: pa.Schema) -> pa.Table:
    """The newest row of every key without its vector column (the old model's, about to be replaced)."""
    if not table.segments:
        return schema.empty_table().drop_columns([vector])
    return merge_tables([table.segment(i).drop_columns([vector]) for i in range(len(table.segments))], table.key)


def latest_members(cluster_ids: np.ndarray, changed_runs: np.ndarray, digests: np.ndarray, count: int) -> pd.Series:
    """The digests of each cluster's `count` latest members (by the run that placed them), oldest first.

    >>> latest_members(np.array([1, 1, 2, 1]), np.array([3, 1, 2, 2]), np.array([10, 11, 12, 13]), 2).to_dict()
    {1: [13, 10], 2: [12]}
    """
    frame = pd.DataFrame({"cluster": cluster_ids, "run": changed_runs, "digest": digests})
    frame = frame.sort_values(["cluster", "run", "digest"], kind="stable")
    return frame.groupby("cluster").tail(count).groupby("cluster")["digest"].agg(list)


@dataclass
class NewSpace:
    """The images and clusters tables remade in the new model's space, and the agreement of the old clustering."""

    images: pa.Table
    clusters: pa.Table
    embedded: np.ndarray  # per image: whether it has an embedding in the new space
    members_embedded: pd.Series  # per cluster id: its members embedded again
    agreement: float


def remake(
    images: pa.Table, clusters: pa.Table, embedded: np.ndarray, vectors: np.ndarray, exemplars: int, memory_mb: float
) -> NewSpace:
    """Rebuild sums, cohesion, exemplars and similarities from the images' new `vectors` (rows where `embedded`).

    Ids, names, states, sizes and merges are the tables' own; a member without an embedding counts in
    its cluster's size, not in its sum. A cluster's sum and exemplars cover the clusters merged into
    it, as its size does: each member counts in every cluster along its merged_into chain.
    """
    dim = vectors.shape[1]
    ids, member_ids = column_array(clusters, "id"), column_array(images, "cluster_id")
    if len(np.setdiff1d(member_ids[member_ids > 0], ids)):
        raise UserError("the catalogue names clusters its clusters table lacks; it is damaged")
    members = np.flatnonzero(embedded & (member_ids > 0))
    merged = column_array(clusters, "merged_into")
    positions, owners = [], []
    level = member_ids[members]
    inside = np.ones(len(members), dtype=bool)
    while inside.any():  # the member's own cluster, then each cluster it was merged into
        positions.append(members[inside])
        owners.append(level[inside])
        level = np.where(inside, merged[np.searchsorted(ids, level)], 0)
        inside = level > 0
    chain_members = np.concatenate([np.zeros(0, np.int64), *positions])
    chain_clusters = np.concatenate([np.zeros(0, np.int64), *owners])
    rows = np.searchsorted(ids, chain_clusters)
    sums = np.zeros((len(ids), dim), dtype=np.float64)
    np.add.at(sums, rows, vectors[chain_members].astype(np.float64))
    norms = np.linalg.norm(sums, axis=1)
    prototypes = (sums / np.maximum(norms, 1e-12)[:, None]).astype(np.float32)
    similarity = np.full(images.num_rows, np.nan)
    own = np.searchsorted(ids, member_ids[members])
    similarity[members] = np.einsum("ij,ij->i", vectors[members], prototypes[own])
    latest = latest_members(
        chain_clusters,
        column_array(images, "changed_run")[chain_members],
        column_array(images, "digest")[chain_members],
        exemplars,
    )
    live = (merged == 0) & (norms > 0)
    merges = {int(c): int(o) for c, o in zip(ids[merged > 0], merged[merged > 0], strict=True)}
    score = agreement(vectors[members], member_ids[members], ids[live], prototypes[live], merges, memory_mb)

    images = images.set_column(images.schema.get_field_index("similarity"), "similarity", pa.array(similarity))
    images = images.append_column("embedding", vector_column(vectors, pa.float32(), mask=~embedded))
    cohesion = pa.array(norms / np.maximum(column_array(clusters, "size"), 1))
    clusters = clusters.set_column(clusters.schema.get_field_index("cohesion"), "cohesion", cohesion)
    exemplar_lists = pa.array([latest.get(c, []) for c in ids.tolist()], pa.list_(pa.uint64()))
    clusters = clusters.set_column(clusters.schema.get_field_index("exemplars"), "exemplars", exemplar_lists)
    clusters = clusters.append_column("sum", vector_column(sums, pa.float64()))
    return NewSpace(
        images=images.select(images_schema(dim).names).cast(images_schema(dim)),
        clusters=clusters.select(clusters_schema(dim).names).cast(clusters_schema(dim)),
        embedded=embedded,
        members_embedded=pd.Series(member_ids[members]).value_counts(),
        agreement=score,
    )


def commit_migration(catalogue: Catalogue, space: NewSpace, model_id: str, threshold: float, seed: int) -> None:
    """Write the remade tables as one fresh segment each, the events, the run's row and the pool; one manifest switch.

    The fresh segments take the level of the table's highest one, so compaction does not fold them
    into the next small run segments.
    """
    run, dim = catalogue.run + 1, space.images.schema.field("embedding").type.list_size
    time_now = datetime.now(UTC).isoformat(timespec="seconds")
    ids = column_array(space.clusters, "id").tolist()
    counts = space.members_embedded
    events = [Event(run, time_now, "migrated", int(c), images=int(counts.get(c, 0))) for c in ids]
    pool = catalogue.pool[np.isin(catalogue.pool, column_array(space.images, "digest")[space.embedded])]
    levels = {name: max((s.level for s in catalogue.tables[name].segments), default=0) for name in TABLES_REMADE}
    catalogue.run, catalogue.model_id, catalogue.embedding_dim = run, model_id, dim
    for name, rows in (("images", space.images), ("clusters", space.clusters)):
        fresh = [write_table_segment(catalogue, name, rows, levels[name], seed)] if rows.num_rows else []
        catalogue.tables[name].segments = fresh
    change = CatalogueChange(
        images=None,
        clusters=None,
        events=events_table(events),
        runs=runs_table([{"run": run, "time": time_now, "threshold": float(threshold), "model_id": model_id}]),
        pool=pool,
        next_cluster_id=catalogue.next_cluster_id,
    )
    commit_change(catalogue, change, seed)
    compact(catalogue, seed)


def migrate_catalogue(
    catalogue: Catalogue, embedder: OnnxEmbedder, model_id: str, threshold: float, config: Config
) -> Migration:
    """Remake the catalogue in `embedder`'s space and commit it as one run (caller holds OUT's lock).

    On an error nothing is committed; load the catalogue again before using it.
    """
    started = time.perf_counter()
    if catalogue.run == 0 or catalogue.model_id is None or catalogue.embedding_dim is None:
        raise UserError(f"the catalogue in {catalogue.directory} is empty: there is nothing to migrate")
    old_model, old_dim = catalogue.model_id, catalogue.embedding_dim
    images = current_rows(catalogue.images, "embedding", images_schema(old_dim))
    clusters = current_rows(catalogue.clusters, "sum", clusters_schema(old_dim))
    log.info(
        "the catalogue in %s was built with model %s: migrating it to %s (%d images, %d clusters)",
        catalogue.directory,
        old_model,
        model_id,
        images.num_rows,
        clusters.num_rows,
    )
    embed_started = time.perf_counter()
    positions, vectors = re_embed(
        embedder,
        images.column("source").to_pylist(),
        images.column("sha256").to_pylist(),
        config.embed.batch_size,
        config.embed.workers,
    )
    embed_seconds = time.perf_counter() - embed_started
    embedded = np.zeros(images.num_rows, dtype=bool)
    embedded[positions] = True
    if not embedded.all():
        log.warning(
            "%d of %d images could not be read with the content they were clustered with (file gone or changed): "
            "they keep their cluster id without an embedding in the new model's space",
            int((~embedded).sum()),
            images.num_rows,
        )
    all_vectors = np.zeros((images.num_rows, embedder.metadata.embedding_dim), dtype=np.float32)
    all_vectors[positions] = vectors
    space = remake(images, clusters, embedded, all_vectors, config.cluster.exemplars, config.cluster.block_memory_mb)
    commit_migration(catalogue, space, model_id, threshold, config.cluster.seed)
    migration = Migration(
        run=catalogue.run,
        old_model=old_model,
        new_model=model_id,
        images=images.num_rows,
        embedded=int(embedded.sum()),
        missing=int((~embedded).sum()),
        clusters=clusters.num_rows,
        agreement=space.agreement,
        seconds=time.perf_counter() - started,
        embed_seconds=embed_seconds,
    )
    with atomic_directory(catalogue.directory.parent / "runs" / f"run-{catalogue.run:06d}", replace=True) as staging:
        write_json_atomic(staging / MIGRATION_FILE, asdict(migration) | {"threshold": threshold})
    log.info(
        "migrated %d images (%d embedded again, %d files gone or changed) and %d clusters in %.1f s; agreement %.3f",
        migration.images,
        migration.embedded,
        migration.missing,
        migration.clusters,
        migration.seconds,
        migration.agreement,
    )
    return migration
