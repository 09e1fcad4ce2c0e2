"""The `cluster` stage: group an inbox of unlabelled images into clusters whose ids stay stable across runs.

A run, under OUT's lock:

1. lists the inbox and hashes every file; images are keyed by path + content hash, so a batch
   seen before is skipped without being embedded, and an empty or already-seen inbox is a quick no-op;
2. embeds only the new images with the torch-free ONNX embedder;
3. clusters the new images together with the images earlier runs left unclustered and the
   exemplars of the clusters they are near (placement.py, by cluster.method): new images join
   existing clusters (existing ids never change) or form new ones of at least min_size images,
   numbered by size after the largest id ever issued (ids are never reused); clusters found to be
   one are recorded in merged_into, never renumbered;
4. writes OUT/runs/run-NNNNNN/ (assignments.csv, clusters.json, report.html, metrics.json),
   commits the registry, appends the run's rows to OUT/assignments.csv and refreshes OUT/clusters.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Group, RenderableType
from rich.text import Text

from replearn.artifacts.hashing import sha256_file
from replearn.artifacts.metadata import ModelMetadata
from replearn.atomic import atomic_directory, atomic_path, write_bytes_atomic, write_json_atomic
from replearn.clustering.inbox import HASH_CACHE_NAME, hash_inbox
from replearn.clustering.placement import latest_exemplars, place_batch
from replearn.clustering.registry import MEMBER_COLUMNS, Registry, commit_registry, load_registry, registry_lock
from replearn.clustering.report import REPORT_FILE, write_report
from replearn.config import ClusterConfig, Config
from replearn.console import results_table
from replearn.errors import UserError
from replearn.similarity import unit_rows

log = logging.getLogger(__name__)


@dataclass
class ImageBatch:
    """Images to cluster: row i of `embeddings` is `paths[i]` (relative to the inbox) with content hash `sha256[i]`.

    `sources` are where the files can be read for the report's thumbnails (absolute paths).
    """

    paths: list[str]
    sha256: list[str]
    sources: list[str]
    embeddings: np.ndarray

    @property
    def keys(self) -> list[str]:
        return [image_key(path, digest) for path, digest in zip(self.paths, self.sha256, strict=True)]


def image_key(path: str, sha256: str) -> str:
    """An image's identity in the registry: the same path with new content is a new image.

    >>> image_key("cats/1.jpg", "ab12")
    'cats/1.jpg@ab12'
    """
    return f"{path}@{sha256}"


@dataclass
class ClusterRun:
    """What one run did; `run` is None when there was nothing new to cluster."""

    run: int | None
    run_dir: Path | None
    images: int
    new_images: int = 0
    assigned_to_existing: int = 0
    new_clusters: int = 0
    unclustered: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    assignments: pd.DataFrame | None = None

    def __rich__(self) -> RenderableType:
        """What the run did with the new images, their agreement with the class folders if scored, the report."""
        if self.run is None or self.run_dir is None:
            unreadable = f", {len(self.failures):,} unreadable" if self.failures else ""
            return Text(f"nothing new among {self.images:,} files{unreadable}: the registry is unchanged")
        counts = (self.new_images, self.assigned_to_existing, self.new_clusters, self.unclustered, len(self.failures))
        work = results_table(
            f"clustering run {self.run} into {self.run_dir.parent.parent}",  # OUT/runs/run-NNNNNN
            ("new images", "joined existing", "new clusters", "unclustered", "unreadable"),
            tuple(f"{n:,}" for n in counts),
        )
        parts: list[RenderableType] = [work]
        if self.metrics:
            rows = (
                (name, f"{value:.4f}" if isinstance(value, float) else str(value))
                for name, value in self.metrics.items()
            )
            parts.append(results_table("agreement with the class folders", ("metric", "value"), *rows))
        parts.append(Text(f"report: {self.run_dir / REPORT_FILE}"))
        return Group(*parts)


def add_to_clusters(registry: Registry, cluster_ids: np.ndarray, embeddings: np.ndarray) -> None:
    """Add members to existing or new clusters of the registry, updating sums and counts in place."""
    if len(cluster_ids) == 0:
        return
    new_ids = np.setdiff1d(np.unique(cluster_ids), registry.cluster_ids)
    if len(new_ids):
        dim = embeddings.shape[1]
        sums = registry.sums if registry.sums.size else np.zeros((0, dim))
        registry.cluster_ids = np.concatenate([registry.cluster_ids, new_ids])
        registry.sums = np.concatenate([sums, np.zeros((len(new_ids), dim))])
        registry.sizes = np.concatenate([registry.sizes, np.zeros(len(new_ids), dtype=np.int64)])
    rows = np.searchsorted(registry.cluster_ids, cluster_ids)
    np.add.at(registry.sums, rows, embeddings.astype(np.float64))
    np.add.at(registry.sizes, rows, 1)


def check_compatible(registry: Registry, model_id: str, embedding_dim: int) -> None:
    """Cluster ids from another model are not comparable: refuse rather than silently mix them."""
    if registry.model_id is not None and registry.model_id != model_id:
        raise UserError(
            f"the cluster registry in {registry.directory} was built with another model ({registry.model_id}, "
            f"this one is {model_id}); embeddings of different models are not comparable. Use a new OUT folder"
        )
    if registry.embedding_dim is not None and registry.embedding_dim != embedding_dim:
        raise UserError(
            f"the cluster registry in {registry.directory} holds {registry.embedding_dim}-dim embeddings, "
            f"this batch has {embedding_dim}; use a new OUT folder"
        )


def update_registry(
    registry: Registry, batch: ImageBatch, threshold: float, config: ClusterConfig
) -> tuple[pd.DataFrame, dict[str, int], dict[int, int]]:
    """Place a batch of new images in memory (placement.py) and update sums, exemplars, merges and the pool.

    Returns the member rows this run writes (the batch, plus earlier unclustered images that
    joined a cluster), counts for the summary and this run's merges. Pure given the registry and the batch.
    """
    keys = np.array(batch.keys, dtype=object)
    embeddings = unit_rows(batch.embeddings)
    old_pool_keys, old_pool_sources = registry.pool_keys, registry.pool_sources
    old_pool = registry.pool_embeddings.reshape(len(old_pool_keys), embeddings.shape[1])
    placement = place_batch(registry, embeddings, threshold, config)
    batch_ids, pool_ids = placement.batch_ids, placement.pool_ids
    moved = pool_ids > 0
    clustered = batch_ids > 0

    member_ids = np.concatenate([batch_ids[clustered], pool_ids[moved]])
    member_vectors = np.concatenate([embeddings[clustered], old_pool[moved]])
    add_to_clusters(registry, member_ids, member_vectors)
    registry.exemplar_ids, registry.exemplars = latest_exemplars(
        np.concatenate([registry.exemplar_ids, member_ids]),
        np.concatenate([registry.exemplars.reshape(-1, embeddings.shape[1]), member_vectors]).astype(np.float32),
        config.exemplars,
    )
    registry.merged_into.update(placement.merges)
    registry.next_cluster_id += placement.new_clusters

    # The pool keeps the newest cluster.pool_max unclustered images; older ones stay in cluster 0 for good.
    pool_keys = np.concatenate([old_pool_keys[~moved], keys[~clustered]])
    retired = max(0, len(pool_keys) - config.pool_max)
    registry.pool_keys = pool_keys[retired:]
    sources = np.array(batch.sources, dtype=object)
    registry.pool_sources = np.concatenate([old_pool_sources[~moved], sources[~clustered]])[retired:]
    registry.pool_embeddings = np.concatenate([old_pool[~moved], embeddings[~clustered]])[retired:].astype(np.float32)
    registry.run += 1

    members = pd.DataFrame(
        {"key": keys, "path": batch.paths, "source": batch.sources, "sha256": batch.sha256, "cluster_id": batch_ids}
    )
    if moved.any():
        moved_keys = old_pool_keys[moved]
        paths, digests = zip(*(key.rsplit("@", 1) for key in moved_keys), strict=True)
        joined = pd.DataFrame({"key": moved_keys, "path": paths, "source": old_pool_sources[moved], "sha256": digests})
        joined["cluster_id"] = pool_ids[moved]
        members = pd.concat([members, joined], ignore_index=True)
    member_embeddings = np.concatenate([embeddings, old_pool[moved]])
    members["similarity"] = similarity_to_prototype(registry, members["cluster_id"].to_numpy(), member_embeddings)
    members["run"] = registry.run
    counts = {
        "new_images": len(keys),
        "assigned_to_existing": placement.joined_existing,
        "new_clusters": placement.new_clusters,
        "earlier_unclustered_joined": int(moved.sum()),
        "unclustered": int((~clustered).sum()),
        "merged": len(placement.merges),
        "retired_from_pool": retired,
    }
    return members[MEMBER_COLUMNS], counts, placement.merges


def similarity_to_prototype(registry: Registry, cluster_ids: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Each image's similarity to its cluster's (updated) prototype; NaN for unclustered images."""
    similarity = np.full(len(cluster_ids), np.nan)
    clustered = cluster_ids > 0
    if clustered.any():
        rows = np.searchsorted(registry.cluster_ids, cluster_ids[clustered])
        similarity[clustered] = np.einsum("ij,ij->i", embeddings[clustered], registry.prototypes[rows])
    return similarity


def select_new(registry: Registry, paths: list[str], sha256: list[str]) -> list[int]:
    """Positions of the images the registry has not seen (by path + content hash)."""
    known = registry.known([image_key(path, digest) for path, digest in zip(paths, sha256, strict=True)])
    return np.flatnonzero(~known).tolist()


def class_labels(paths: list[str]) -> list[str]:
    """The class folder of each image, for evaluation; an image outside a class folder is an error.

    >>> class_labels(["cat/1.jpg", "dog/a/2.jpg"])
    ['cat', 'dog']
    """
    loose = [path for path in paths if "/" not in path]
    if loose:
        raise UserError(
            f"evaluation needs every image inside a class folder (INBOX/<class>/<image>), "
            f"but {len(loose)} are not, e.g. {loose[0]}"
        )
    return [path.split("/", 1)[0] for path in paths]


def clusters_summary(
    registry: Registry, members: pd.DataFrame, counts: dict[str, int], threshold: float, merges: dict[int, int]
) -> dict[str, Any]:
    """Sizes and cohesion of every cluster, and what this run changed: clusters.json.

    merged_into maps a cluster id to the id of the cluster it was found to be one with; follow it
    (it may chain over runs) to read a member's current cluster. Ids themselves never change.
    """
    added = members[members["cluster_id"] > 0].groupby("cluster_id").size()
    first_id_this_run = registry.next_cluster_id - counts["new_clusters"]
    ids = pd.Series(registry.cluster_ids)
    table = pd.DataFrame(
        {
            "id": ids,
            "size": registry.sizes,
            "cohesion": registry.cohesion.round(6),
            "added_this_run": ids.map(added).fillna(0).astype(np.int64),
            "new_this_run": ids >= first_id_this_run,
        }
    )
    clusters = table.to_dict("records")
    for cluster in clusters:
        cluster["merged_into"] = registry.merged_into.get(cluster["id"])
    return {
        "run": registry.run,
        "threshold": threshold,
        **counts,
        "clusters_total": len(clusters),
        "pool": len(registry.pool_keys),
        "merged_this_run": {str(k): v for k, v in sorted(merges.items())},
        "merged_into": {str(k): v for k, v in sorted(registry.merged_into.items())},
        "clusters": clusters,
    }


def follow_merges(cluster_ids: np.ndarray, merged_into: dict[int, int]) -> np.ndarray:
    """The cluster each id belongs to now, following clusters.json's merged_into (which may chain).

    >>> follow_merges(np.array([0, 2, 3, 5]), {3: 2, 2: 1}).tolist()
    [0, 1, 1, 5]
    """

    def final(cluster_id: int) -> int:
        while cluster_id in merged_into:
            cluster_id = merged_into[cluster_id]
        return cluster_id

    return np.array([final(int(cluster_id)) for cluster_id in cluster_ids], dtype=np.int64)


ASSIGNMENT_COLUMNS = ["path", "cluster_id", "similarity"]


def assignments_csv(members: pd.DataFrame, header: bool) -> bytes:
    """path, cluster_id, similarity (to the cluster prototype; empty for cluster 0) as CSV bytes."""
    text = members[ASSIGNMENT_COLUMNS].to_csv(index=False, header=header, float_format="%.6f")
    return text.encode()


def write_assignments(path: Path, members: pd.DataFrame) -> None:
    """The run's own assignments.csv, written whole."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(assignments_csv(members, header=True))


def plan_assignments_view(view: Path, registry: Registry, members: pd.DataFrame) -> tuple[bytes, bool]:
    """What to write to OUT/assignments.csv after this run: (bytes, whether they replace the file).

    The view is append-only, one row per image per run that placed it, so a run costs its own rows,
    not the history; an image that later leaves cluster 0 appears again, and the last row of a path
    wins. When the file is not the size the last commit recorded (a crash between commit and
    append, an edit, a deletion), it is rebuilt from the registry's segments instead.
    """
    size = view.stat().st_size if view.is_file() else -1
    if size == registry.assignments_bytes and size > 0:
        return assignments_csv(members, header=False), False
    history = pd.concat([registry.members(), members], ignore_index=True)
    return assignments_csv(history.drop_duplicates("key", keep="last"), header=True), True


def update_assignments_view(view: Path, data: bytes, replace: bool, expected_size: int) -> None:
    """Append this run's rows to OUT/assignments.csv (or replace it), ending at the size the manifest recorded."""
    if replace:
        with atomic_path(view) as temporary:
            temporary.write_bytes(data)
        return
    with view.open("r+b") as handle:
        handle.truncate(expected_size - len(data))
        handle.seek(0, 2)
        handle.write(data)


def record_batch(
    registry: Registry,
    batch: ImageBatch,
    threshold: float,
    config: ClusterConfig,
    out_dir: Path,
    evaluate: bool = False,
    failures: list[tuple[str, str]] | None = None,
    images: int | None = None,
) -> ClusterRun:
    """Cluster a batch of new images into the registry and write the run's outputs (caller holds the lock)."""
    failures = failures or []
    labels = class_labels(batch.paths) if evaluate else None
    members, counts, merges = update_registry(registry, batch, threshold, config)
    batch_members = members.iloc[: len(batch.paths)]
    metrics = clustering_scores_of(labels, batch_members["cluster_id"].to_numpy()) if labels is not None else {}
    summary = clusters_summary(registry, members, counts, threshold, merges)
    run_dir = out_dir / "runs" / f"run-{registry.run:06d}"
    with atomic_directory(run_dir, replace=True) as staging:
        write_assignments(staging / "assignments.csv", members)
        pd.DataFrame(failures, columns=["path", "error"]).to_csv(staging / "failures.csv", index=False)
        write_json_atomic(staging / "clusters.json", summary, compact=True)
        if metrics:
            write_json_atomic(staging / "metrics.json", metrics)
        write_report(staging, summary, members, failures, metrics, config)
    run_info = {"run": registry.run, "time": datetime.now(UTC).isoformat(timespec="seconds"), "threshold": threshold}
    run_info.update(counts)
    view = out_dir / "assignments.csv"
    view_bytes, replace_view = plan_assignments_view(view, registry, members)
    registry.assignments_bytes = len(view_bytes) + (0 if replace_view else registry.assignments_bytes)
    commit_registry(registry, members, run_info)
    update_assignments_view(view, view_bytes, replace_view, registry.assignments_bytes)
    # The same bytes as the run's own clusters.json: serialising every cluster once is enough.
    write_bytes_atomic(out_dir / "clusters.json", (run_dir / "clusters.json").read_bytes())
    log.info(
        "run %d: %d new images, %d joined existing clusters, %d new clusters, %d unclustered",
        registry.run,
        counts["new_images"],
        counts["assigned_to_existing"],
        counts["new_clusters"],
        counts["unclustered"],
    )
    return ClusterRun(
        run=registry.run,
        run_dir=run_dir,
        images=len(batch.paths) if images is None else images,
        new_images=counts["new_images"],
        assigned_to_existing=counts["assigned_to_existing"],
        new_clusters=counts["new_clusters"],
        unclustered=counts["unclustered"],
        failures=failures,
        metrics=metrics,
        assignments=members,
    )


def clustering_scores_of(labels: list[str], cluster_ids: np.ndarray) -> dict[str, float]:
    """Labelled-evaluation metrics (imported only when asked for: they need scikit-learn)."""
    from replearn.clustering.metrics import clustering_scores

    return clustering_scores(labels, cluster_ids)


def cluster_embeddings_into(
    config: ClusterConfig,
    batch: ImageBatch,
    out_dir: Path,
    threshold: float,
    model_id: str,
    evaluate: bool = False,
) -> ClusterRun:
    """The stage on embeddings already computed: lock OUT, skip known images, cluster the rest into the registry."""
    with registry_lock(out_dir):
        registry = load_registry(out_dir)
        check_compatible(registry, model_id, batch.embeddings.shape[1])
        new = select_new(registry, batch.paths, batch.sha256)
        if not new:
            log.info("all %d images are already in the registry in %s: nothing to do", len(batch.paths), out_dir)
            return ClusterRun(run=None, run_dir=None, images=len(batch.paths))
        registry.model_id, registry.embedding_dim = model_id, batch.embeddings.shape[1]
        subset = ImageBatch(
            paths=[batch.paths[i] for i in new],
            sha256=[batch.sha256[i] for i in new],
            sources=[batch.sources[i] for i in new],
            embeddings=batch.embeddings[new],
        )
        return record_batch(registry, subset, threshold, config, out_dir, evaluate, images=len(batch.paths))


def resolve_threshold(config: ClusterConfig, metadata: ModelMetadata, model_path: Path) -> float:
    """cluster.threshold when set, else the model's: calibrated with the resolution for louvain, the pair one else.

    A model exported before the cluster stage's own threshold was calibrated gives its pair threshold.
    """
    if config.threshold is not None:
        return config.threshold
    if config.method == "louvain" and metadata.cluster_threshold is not None:
        return metadata.cluster_threshold
    model_threshold = metadata.threshold
    if model_threshold is None:
        raise UserError(
            f"{model_path} carries no calibrated threshold in its metadata; "
            "set one with --threshold or --set cluster.threshold=0.8"
        )
    return model_threshold


def with_model_resolution(config: ClusterConfig, metadata: ModelMetadata) -> ClusterConfig:
    """cluster.resolution when set, else the value calibrated at evaluation and stored in the model.

    A model exported before the resolution was calibrated keeps the defaults (methods.py), with a warning.
    """
    if config.method != "louvain" or config.resolution is not None:
        return config
    if metadata.resolution is None:
        log.warning("the model carries no calibrated Louvain resolution; using the default (set cluster.resolution)")
        return config
    return config.model_copy(update={"resolution": metadata.resolution})


def cluster_images(config: Config, model_path: Path, inbox: Path, out_dir: Path, evaluate: bool = False) -> ClusterRun:
    """The `cluster` stage: embed the new images of INBOX with the ONNX model and cluster them into OUT's registry."""
    from replearn.embedding.onnx import OnnxEmbedder, embed_folder, list_images

    names = list_images(inbox)
    if not names:
        log.info("inbox %s is empty: nothing to do", inbox)
        return ClusterRun(run=None, run_dir=None, images=0)
    if evaluate:
        class_labels(names)  # fail before any work when the inbox is not in class folders
    with registry_lock(out_dir):
        registry = load_registry(out_dir)
        hashes = hash_inbox(inbox, names, out_dir / HASH_CACHE_NAME)
        for path, error in hashes.failures:
            log.warning("skipped %s: %s", inbox / path, error)
        new = select_new(registry, hashes.paths, hashes.sha256)
        if not new:
            log.info("all readable images of %s are already in the registry: nothing to do", inbox)
            return ClusterRun(run=None, run_dir=None, images=len(names), failures=hashes.failures)
        embedder = OnnxEmbedder(model_path, provider=config.embed.provider, threads=config.embed.threads)
        model_id = f"sha256:{sha256_file(model_path)}"
        check_compatible(registry, model_id, embedder.metadata.embedding_dim)
        threshold = resolve_threshold(config.cluster, embedder.metadata, model_path)
        settings = with_model_resolution(config.cluster, embedder.metadata)
        new_paths = [hashes.paths[i] for i in new]
        embed = config.embed
        result = embed_folder(embedder, inbox, batch_size=embed.batch_size, workers=embed.workers, names=new_paths)
        failures = hashes.failures + result.failures
        digest_of = {hashes.paths[i]: hashes.sha256[i] for i in new}
        batch = ImageBatch(
            paths=result.paths,
            sha256=[digest_of[path] for path in result.paths],
            sources=[str((inbox / path).resolve()) for path in result.paths],
            embeddings=result.embeddings,
        )
        registry.model_id, registry.embedding_dim = model_id, embedder.metadata.embedding_dim
        if not batch.paths:
            # Unreadable files are not registered, so they are retried (and skipped) every run without changing OUT.
            log.warning("none of the %d new files in %s could be read: nothing to do", len(new), inbox)
            return ClusterRun(run=None, run_dir=None, images=len(names), failures=failures)
        return record_batch(registry, batch, threshold, settings, out_dir, evaluate, failures, len(names))
