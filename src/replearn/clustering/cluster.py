"""The `cluster` stage: group an inbox of unlabelled images into clusters whose ids stay stable across runs.

A run, under OUT's lock:

1. lists the inbox and hashes every file; images are keyed by path + content hash, so a batch
   seen before is skipped without being embedded, and an empty or already-seen inbox is a quick no-op;
2. embeds only the new images with the torch-free ONNX embedder;
3. clusters the new images together with the images earlier runs left unclustered and the
   exemplars of the clusters whose prototypes are nearest (placement.py, by cluster.method): new images join
   existing clusters (existing ids never change) or form new ones of at least min_size images,
   numbered by size after the largest id ever issued (ids are never reused); clusters found to be
   one are recorded in merged_into, never renumbered;
4. writes OUT/runs/run-NNNNNN/ (assignments.csv and clusters.json of what the run changed,
   report.html, metrics.json) and commits the catalogue (catalogue/store.py): a segment per table
   with this run's rows, a new pool, then compaction when a level is full.

A model other than the catalogue's first migrates it (catalogue/migration.py, a run of its own):
every image is embedded again in the new model's space, ids, names and states are kept; a run with
no new images over the whole catalogue (revise_catalogue) then revises automatic clusters in the
new space; then the batch is clustered as above.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Group, RenderableType
from rich.text import Text

from replearn.artifacts.hashing import sha256_file
from replearn.artifacts.metadata import ModelMetadata
from replearn.atomic import atomic_directory, atomic_path, write_json_atomic
from replearn.catalogue.format1 import convert_registry
from replearn.catalogue.migration import Migration, migrate_catalogue
from replearn.catalogue.store import (
    CATALOGUE_DIR,
    Catalogue,
    catalogue_lock,
    commit_change,
    compact,
    key_digests,
    load_catalogue,
    now,
)
from replearn.clustering.inbox import HASH_CACHE_NAME, hash_inbox
from replearn.clustering.neighbourhood import RunRows, neighbourhood_of, revise, whole_catalogue
from replearn.clustering.placement import Placement, place_batch, without_rejected
from replearn.clustering.report import REPORT_FILE, write_report
from replearn.clustering.review import Suggestion, exemplar_sources, review_suggestions
from replearn.config import ClusterConfig, Config
from replearn.console import results_table
from replearn.errors import UserError
from replearn.similarity import unit_rows

if TYPE_CHECKING:
    from replearn.embedding.onnx import OnnxEmbedder  # imported where used: onnxruntime loads only then

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
    """An image's identity in the catalogue: the same path with new content is a new image.

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
    changed_ids: int = 0
    churn: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    assignments: pd.DataFrame | None = None
    migration: Migration | None = None  # when a new model migrated the catalogue first ...
    revision: ClusterRun | None = None  # ... and the run that revised its automatic clusters in the new space

    def __rich__(self) -> RenderableType:
        """A migration first if any; what the run did with the new images, their scores if any, the report."""
        before: list[RenderableType] = [self.migration] if self.migration else []
        before += [self.revision] if self.revision else []
        if self.run is None or self.run_dir is None:
            unreadable = f", {len(self.failures):,} unreadable" if self.failures else ""
            unchanged = "" if self.migration else ": the catalogue is unchanged"
            return Group(*before, Text(f"nothing new among {self.images:,} files{unreadable}{unchanged}"))
        counts = (self.new_images, self.assigned_to_existing, self.new_clusters, self.unclustered, len(self.failures))
        work = results_table(
            f"clustering run {self.run} into {self.run_dir.parent.parent}",  # OUT/runs/run-NNNNNN
            ("new images", "joined existing", "new clusters", "unclustered", "unreadable", "ids changed"),
            (*(f"{n:,}" for n in counts), f"{self.changed_ids:,} ({self.churn:.1%})"),
        )
        parts: list[RenderableType] = [*before, work]
        if self.metrics:
            rows = (
                (name, f"{value:.4f}" if isinstance(value, float) else str(value))
                for name, value in self.metrics.items()
            )
            parts.append(results_table("agreement with the class folders", ("metric", "value"), *rows))
        parts.append(Text(f"report: {self.run_dir / REPORT_FILE}"))
        return Group(*parts)


def check_compatible(catalogue: Catalogue, model_id: str, embedding_dim: int) -> None:
    """Embeddings of another model are not comparable: refuse them rather than silently mix them.

    Only embeddings computed elsewhere reach this check; `cluster_images` migrates the catalogue instead.
    """
    if built_with_another_model(catalogue, model_id):
        raise UserError(
            f"the cluster catalogue in {catalogue.directory} was built with another model ({catalogue.model_id}, "
            f"these embeddings are of {model_id}); embeddings of different models are not comparable. "
            f"Migrate it first: `replearn cluster NEW_MODEL.onnx INBOX {catalogue.directory.parent}`"
        )
    if catalogue.embedding_dim is not None and catalogue.embedding_dim != embedding_dim:
        raise UserError(
            f"the cluster catalogue in {catalogue.directory} holds {catalogue.embedding_dim}-dim embeddings, "
            f"this batch has {embedding_dim}; migrate it first with `replearn cluster NEW_MODEL.onnx INBOX OUT`"
        )


def built_with_another_model(catalogue: Catalogue, model_id: str) -> bool:
    """Whether the catalogue holds embeddings of a model other than `model_id`: a new model, to migrate to."""
    return catalogue.model_id is not None and catalogue.model_id != model_id


def open_catalogue(out_dir: Path) -> Catalogue:
    """OUT's catalogue; a format-1 registry (OUT/registry) is converted to one first (caller holds the lock)."""
    if not (out_dir / CATALOGUE_DIR / "manifest.json").is_file() and (out_dir / "registry" / "manifest.json").is_file():
        convert_registry(out_dir)
    return load_catalogue(out_dir)


def select_new(catalogue: Catalogue, paths: list[str], sha256: list[str]) -> list[int]:
    """Positions of the images the catalogue has not seen (by path + content hash)."""
    known = catalogue.known([image_key(path, digest) for path, digest in zip(paths, sha256, strict=True)])
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
    run: int, rows: RunRows, placement: Placement, threshold: float, suggestions: list[Suggestion]
) -> dict[str, Any]:
    """What this run changed: the counts, every cluster it created, grew, split or merged, and what to review.

    merged_into maps a cluster id to the id of the cluster it was found to be one with; follow it
    (it may chain over runs, see the catalogue's clusters table) to read a member's current cluster.
    split_this_run maps each id issued for a split-off part to the cluster it came from.
    """
    clusters = rows.changed_clusters.to_dict("records")
    for cluster in clusters:
        cluster["merged_into"] = int(cluster["merged_into"]) or None
    return {
        "run": run,
        "threshold": threshold,
        **rows.counts,
        "clusters_total": rows.change.next_cluster_id - 1,
        "pool": len(rows.change.pool),
        "merged_this_run": {str(k): v for k, v in sorted(rows.merges.items())},
        "split_this_run": {str(k): v for k, v in sorted(placement.splits.items())},
        "dissolved_this_run": placement.dissolved,
        "clusters": clusters,
        "suggestions": [vars(suggestion) | {"cluster_ids": list(suggestion.cluster_ids)} for suggestion in suggestions],
    }


ASSIGNMENT_COLUMNS = ["path", "cluster_id", "similarity"]


def write_assignments(path: Path, members: pd.DataFrame) -> None:
    """path, cluster_id, similarity (to the cluster prototype; empty for cluster 0), written whole."""
    with atomic_path(path) as temporary:
        members[ASSIGNMENT_COLUMNS].to_csv(temporary, index=False, float_format="%.6f")


def record_batch(
    catalogue: Catalogue,
    batch: ImageBatch,
    threshold: float,
    config: ClusterConfig,
    out_dir: Path,
    evaluate: bool = False,
    failures: list[tuple[str, str]] | None = None,
    images: int | None = None,
    every_cluster: bool = False,
) -> ClusterRun:
    """Cluster a batch of new images into the catalogue and write the run's outputs (caller holds the lock).

    With `every_cluster` the run looks at the whole catalogue instead of the batch's neighbourhood
    (revise_catalogue).
    """
    failures = failures or []
    labels = class_labels(batch.paths) if evaluate else None
    embeddings = unit_rows(batch.embeddings)
    view = whole_catalogue(catalogue, config) if every_cluster else neighbourhood_of(catalogue, embeddings, config)
    budget = int(config.max_churn * catalogue.assigned_images())
    context = view.placement_context(budget)
    next_id = catalogue.next_cluster_id
    placement = place_batch(context, view.pool_embeddings, embeddings, threshold, config, next_id, every_cluster)
    rejected = catalogue.rejected_from(view.pool["digest"].to_numpy(np.uint64))
    placement.pool_ids = without_rejected(placement.pool_ids, rejected)
    keys = batch.keys
    frame = pd.DataFrame(
        {"digest": key_digests(keys), "key": keys, "path": batch.paths, "source": batch.sources, "sha256": batch.sha256}
    )
    run_info = {"time": now(), "threshold": float(threshold), "model_id": catalogue.model_id or ""}
    rows = revise(catalogue, view, frame, embeddings, placement, config, run_info)
    run = catalogue.run + 1
    suggestions = review_suggestions(
        view, placement, rows.changed_clusters["id"].to_numpy(), threshold, out_dir, config.report_clusters
    )
    batch_sources = dict(zip(frame["digest"].tolist(), frame["source"], strict=True))
    shown = {c for suggestion in suggestions for c in suggestion.cluster_ids}
    sources = exemplar_sources(catalogue, view, batch_sources, shown, config.report_samples)
    batch_members = rows.members.iloc[: len(batch.paths)]
    metrics = clustering_scores_of(labels, batch_members["cluster_id"].to_numpy()) if labels is not None else {}
    summary = clusters_summary(run, rows, placement, threshold, suggestions)
    run_dir = out_dir / "runs" / f"run-{run:06d}"
    with atomic_directory(run_dir, replace=True) as staging:
        write_assignments(staging / "assignments.csv", rows.members)
        pd.DataFrame(failures, columns=["path", "error"]).to_csv(staging / "failures.csv", index=False)
        write_json_atomic(staging / "clusters.json", summary, compact=True)
        if metrics:
            write_json_atomic(staging / "metrics.json", metrics)
        write_report(staging, summary, rows.members, failures, metrics, config, suggestions, sources)
    catalogue.run = run
    commit_change(catalogue, rows.change, config.seed)
    compact(catalogue, config.seed)
    counts = rows.counts
    log.info(
        "run %d: %d new images, %d joined existing clusters, %d new clusters, %d unclustered",
        run,
        counts["new_images"],
        counts["assigned_to_existing"],
        counts["new_clusters"],
        counts["unclustered"],
    )
    return ClusterRun(
        run=run,
        run_dir=run_dir,
        images=len(batch.paths) if images is None else images,
        new_images=counts["new_images"],
        assigned_to_existing=counts["assigned_to_existing"],
        new_clusters=counts["new_clusters"],
        unclustered=counts["unclustered"],
        changed_ids=counts["changed_ids"],
        churn=counts["churn"],
        failures=failures,
        metrics=metrics,
        assignments=rows.members,
    )


def revise_catalogue(catalogue: Catalogue, threshold: float, config: ClusterConfig, out_dir: Path) -> ClusterRun | None:
    """A run with no new images over every cluster and the pool: what a migration ends with (caller holds the lock).

    In the new model's space some automatic clusters fall apart or turn out to be one; this run
    splits, dissolves and merges them by the same rule and churn budget as a scheduled run, and its
    pool images may form clusters. It costs O(catalogue), once per model. None when there is nothing
    to revise.
    """
    if catalogue.next_cluster_id == 1 and len(catalogue.pool) < config.min_size:
        return None  # no cluster, and too few images to make one
    dim = catalogue.embedding_dim or 0
    empty = ImageBatch(paths=[], sha256=[], sources=[], embeddings=np.zeros((0, dim), dtype=np.float32))
    return record_batch(catalogue, empty, threshold, config, out_dir, every_cluster=True)


def migrate_and_revise(
    catalogue: Catalogue,
    embedder: OnnxEmbedder,
    model_id: str,
    threshold: float,
    config: Config,
    settings: ClusterConfig,
    out_dir: Path,
) -> tuple[Migration, ClusterRun | None]:
    """Migrate the catalogue to a new model, then revise its automatic clusters in the new space (caller locks)."""
    migration = migrate_catalogue(catalogue, embedder, model_id, threshold, config)
    return migration, revise_catalogue(catalogue, threshold, settings, out_dir)


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
    """The stage on embeddings already computed: lock OUT, skip known images, cluster the rest into the catalogue."""
    with catalogue_lock(out_dir):
        catalogue = open_catalogue(out_dir)
        check_compatible(catalogue, model_id, batch.embeddings.shape[1])
        new = select_new(catalogue, batch.paths, batch.sha256)
        if not new:
            log.info("all %d images are already in the catalogue in %s: nothing to do", len(batch.paths), out_dir)
            return ClusterRun(run=None, run_dir=None, images=len(batch.paths))
        catalogue.model_id, catalogue.embedding_dim = model_id, batch.embeddings.shape[1]
        subset = ImageBatch(
            paths=[batch.paths[i] for i in new],
            sha256=[batch.sha256[i] for i in new],
            sources=[batch.sources[i] for i in new],
            embeddings=batch.embeddings[new],
        )
        return record_batch(catalogue, subset, threshold, config, out_dir, evaluate, images=len(batch.paths))


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


def with_model_settings(config: ClusterConfig, metadata: ModelMetadata) -> ClusterConfig:
    """cluster.resolution when set, else the value calibrated at evaluation and stored in the model; and
    cluster.wide_min_size as min_size for a model trained on wide data.

    A model exported before the resolution was calibrated keeps the defaults (methods.py), with a warning.
    Why wide data clusters at 2: a class of an inbox of such data often has 2 or 3 images, and at the
    calibrated threshold its pairs are precise. On the wide benchmark (benchmarks/wide.py) the same
    threshold and resolution scored pairwise F 0.725 at min_size 2 against 0.687 at 3, with 13.7%
    unclustered against 21.7%. Evaluate calibrates at min_size (3) all the same: there only the whole
    calibration classes in val can form clusters of 3, and the thin val images of the others (1 or 2 a
    class) are the impostors that tell a strict cut from a loose one. Calibrated at 2 instead, the
    stage scored 0.666.

    >>> wide = ModelMetadata(64, "RGB", (0, 0, 0), (1, 1, 1), 8, 0.9, (), "", "", "", "pad", resolution=0.3, wide=True)
    >>> settings = with_model_settings(ClusterConfig(), wide)
    >>> settings.resolution, settings.min_size
    (0.3, 2)
    """
    if metadata.wide:
        config = config.model_copy(update={"min_size": config.wide_min_size})
    if config.method != "louvain" or config.resolution is not None:
        return config
    if metadata.resolution is None:
        log.warning("the model carries no calibrated Louvain resolution; using the default (set cluster.resolution)")
        return config
    return config.model_copy(update={"resolution": metadata.resolution})


def cluster_images(config: Config, model_path: Path, inbox: Path, out_dir: Path, evaluate: bool = False) -> ClusterRun:
    """The `cluster` stage: embed the new images of INBOX with the ONNX model and cluster them into OUT's catalogue."""
    from replearn.embedding.onnx import OnnxEmbedder, embed_folder, list_images

    names = list_images(inbox)
    if not names:
        log.info("inbox %s is empty: nothing to do", inbox)
        return ClusterRun(run=None, run_dir=None, images=0)
    if evaluate:
        class_labels(names)  # fail before any work when the inbox is not in class folders
    with catalogue_lock(out_dir):
        catalogue = open_catalogue(out_dir)
        hashes = hash_inbox(inbox, names, out_dir / HASH_CACHE_NAME)
        for path, error in hashes.failures:
            log.warning("skipped %s: %s", inbox / path, error)
        model_id = f"sha256:{sha256_file(model_path)}"
        migrating = built_with_another_model(catalogue, model_id)
        new = select_new(catalogue, hashes.paths, hashes.sha256)
        if not new and not migrating:
            log.info("all readable images of %s are already in the catalogue: nothing to do", inbox)
            return ClusterRun(run=None, run_dir=None, images=len(names), failures=hashes.failures)
        embedder = OnnxEmbedder(model_path, provider=config.embed.provider, threads=config.embed.threads)
        threshold = resolve_threshold(config.cluster, embedder.metadata, model_path)
        settings = with_model_settings(config.cluster, embedder.metadata)
        migration, revision = (
            migrate_and_revise(catalogue, embedder, model_id, threshold, config, settings, out_dir)
            if migrating
            else (None, None)
        )
        if not new:
            log.info("all readable images of %s are already in the catalogue: nothing more to do", inbox)
            return ClusterRun(
                run=None,
                run_dir=None,
                images=len(names),
                failures=hashes.failures,
                migration=migration,
                revision=revision,
            )
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
        catalogue.model_id, catalogue.embedding_dim = model_id, embedder.metadata.embedding_dim
        if not batch.paths:
            # Unreadable files are not registered, so they are retried (and skipped) every run without changing OUT.
            log.warning("none of the %d new files in %s could be read: nothing to do", len(new), inbox)
            return ClusterRun(
                run=None, run_dir=None, images=len(names), failures=failures, migration=migration, revision=revision
            )
        run = record_batch(catalogue, batch, threshold, settings, out_dir, evaluate, failures, len(names))
        run.migration, run.revision = migration, revision
        return run
