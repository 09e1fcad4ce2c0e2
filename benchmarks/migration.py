"""A new model migrates the catalogue: agreement, seconds, and the migrated catalogue against a fresh one.

The protocol of issue 30 ("Done when: Migration"), on the held-out inbox of benchmarks/cluster_quality.py
(62 classes x 40 images rendered, seed 2, from the test family that training never saw):

1. model 1 embeds the inbox and clusters it into a catalogue in 10 shuffled batches (the stage's own
   settings for model 1, the files' real paths and hashes), and the `--confirm` largest clusters a
   reviewer would accept (at least `--purity` of one class) are named, which confirms them;
2. the catalogue is migrated to model 2 (replearn.catalogue.migration) and revised in the new space,
   as `replearn cluster` does: agreement, seconds, seconds per 1,000 images, the share of them
   spent embedding, and the ids the revision changed;
3. checks that every confirmed cluster keeps all its readable members, with its name and state (and
   counts the automatic ones that do: the revision may split, merge or dissolve those);
4. model 2 clusters the same inbox in one run into a fresh catalogue; pairwise F (merges followed) of
   the migrated catalogue and of the fresh one, and their difference (the issue's target: within 0.02),
   beside model 1's own one run.

The same migration of a copy to model 1 itself (another id, the same space) gives the agreement a
catalogue has with its own model, the reference for model 2's.

    python benchmarks/migration.py --model2 /tmp/model2/model.onnx     # about a minute of embedding
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from cluster_quality import current_ids, feed_in_batches, held_out_inbox, stage_settings

from replearn.artifacts.hashing import sha256_file
from replearn.catalogue.corrections import name_cluster
from replearn.catalogue.migration import Migration
from replearn.catalogue.read import follow_merges, merges, read_table
from replearn.catalogue.store import catalogue_lock, load_catalogue
from replearn.clustering.cluster import ClusterRun, ImageBatch, class_labels, migrate_and_revise
from replearn.clustering.metrics import clustering_scores
from replearn.config import Config, load_config
from replearn.embedding.onnx import OnnxEmbedder, embed_folder
from replearn.similarity import unit_rows


def inbox_batch(model: OnnxEmbedder, inbox: Path) -> ImageBatch:
    """The inbox embedded by `model`, keyed by its files' real paths and hashes, so a migration can read them."""
    result = embed_folder(model, inbox)
    return ImageBatch(
        paths=result.paths,
        sha256=[sha256_file(inbox / path) for path in result.paths],
        sources=[str((inbox / path).resolve()) for path in result.paths],
        embeddings=unit_rows(result.embeddings),
    )


def confirm_largest(out: Path, count: int, purity: float) -> list[int]:
    """Name (and so confirm) the `count` largest active clusters a reviewer would accept; returns their ids.

    A reviewer accepts a cluster whose montage shows one class: here, at least `purity` of its images
    are of its most common class folder (0: the largest clusters, unreviewed).
    """
    clusters = read_table(out, "clusters").set_index("id")
    images = read_table(out, "images")
    images["current"] = follow_merges(images["cluster_id"].to_numpy(), merges(out))
    images["class"] = images["path"].str.split("/").str[0]
    clustered = images[images["current"] > 0]
    share = clustered.groupby("current")["class"].agg(lambda c: c.value_counts(normalize=True).iloc[0])
    accepted = share[share >= purity].index
    ids = clusters.loc[accepted, "size"].nlargest(count).index.sort_values().tolist()
    for cluster_id in ids:
        name_cluster(out, cluster_id, f"named {cluster_id}")
    return ids


def migrate(out: Path, model: Path, model_id: str, config: Config) -> tuple[Migration, ClusterRun | None]:
    """Migrate OUT's catalogue to `model`, then revise it in the new space, as `replearn cluster` does."""
    embedder = OnnxEmbedder(model, provider="cpu")
    settings = stage_settings(config.cluster, embedder, model)
    assert settings.threshold is not None
    with catalogue_lock(out):
        catalogue = load_catalogue(out)
        return migrate_and_revise(catalogue, embedder, model_id, settings.threshold, config, settings, out)


def clusters_kept(before: Path, after: Path, ids: list[int]) -> int:
    """How many of the clusters `ids` kept every member (all files are readable here), their name and state."""
    old, new = read_table(before, "images").set_index("key"), read_table(after, "images").set_index("key")
    named_old = read_table(before, "clusters").set_index("id").loc[ids, ["name", "state"]]
    named_new = read_table(after, "clusters").set_index("id").loc[ids, ["name", "state"]]
    kept = 0
    for cluster_id in ids:
        members = old.index[old["cluster_id"] == cluster_id]
        same_members = bool((new.loc[members, "cluster_id"] == cluster_id).all())
        kept += same_members and named_new.loc[cluster_id].equals(named_old.loc[cluster_id])
    return kept


def f_score(s: dict[str, float]) -> str:
    pairwise = f"{s['pairwise_f1']:.3f} (P {s['pairwise_precision']:.3f} / R {s['pairwise_recall']:.3f})"
    return f"{pairwise}, {s['clusters']} clusters"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model1", type=Path, default=Path("outputs/model.onnx"))
    parser.add_argument("--model2", type=Path, required=True, help="another model, e.g. trained with train.seed=1")
    parser.add_argument("--family", default="HKGrotesk", help="typeface family of the held-out inbox")
    parser.add_argument("--per-class", type=int, default=40, help="images per class of the held-out inbox")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--confirm", type=int, default=10, help="largest clusters confirmed by hand before migrating")
    parser.add_argument(
        "--purity", type=float, default=0.95, help="share of one class a reviewer wants to confirm a cluster (0: any)"
    )
    args = parser.parse_args()
    config = load_config(Path("params.yaml"))
    model1, model2 = OnnxEmbedder(args.model1, provider="cpu"), OnnxEmbedder(args.model2, provider="cpu")
    settings1 = stage_settings(config.cluster, model1, args.model1)
    settings2 = stage_settings(config.cluster, model2, args.model2)
    print(f"model 1 {args.model1}: threshold {settings1.threshold:.4f}, resolution {settings1.resolution}")
    print(f"model 2 {args.model2}: threshold {settings2.threshold:.4f}, resolution {settings2.resolution}")
    with tempfile.TemporaryDirectory(prefix="replearn-migration-") as folder:
        root = Path(folder)
        inbox = held_out_inbox(root / "inbox", args.family, args.per_class, config.data.size)
        first = inbox_batch(model1, inbox)
        labels = class_labels(first.paths)
        assert settings1.threshold is not None and settings2.threshold is not None
        built = root / "built"
        feed_in_batches(built, first, settings1.threshold, settings1, args.batches, "model-1")
        confirmed = confirm_largest(built, args.confirm, args.purity)
        before = f_score(clustering_scores(labels, current_ids(built, first.paths)))
        feed_in_batches(root / "model-1-once", first, settings1.threshold, settings1, 1, "model-1")
        once = f_score(clustering_scores(labels, current_ids(root / "model-1-once", first.paths)))

        shutil.copytree(built, root / "self")
        itself, _ = migrate(root / "self", args.model1, "model-1-again", config)
        shutil.copytree(built, root / "migrated")
        started = time.perf_counter()
        migration, revision = migrate(root / "migrated", args.model2, "model-2", config)
        wall = time.perf_counter() - started
        every = read_table(built, "clusters")["id"].tolist()
        kept = clusters_kept(built, root / "migrated", every)
        confirmed_kept = clusters_kept(built, root / "migrated", confirmed)

        second = inbox_batch(model2, inbox)
        assert second.paths == first.paths
        feed_in_batches(root / "fresh", second, settings2.threshold, settings2, 1, "model-2")
        migrated = clustering_scores(labels, current_ids(root / "migrated", first.paths))
        fresh = clustering_scores(labels, current_ids(root / "fresh", first.paths))

        print(f"\n== {len(labels):,} images, {len(set(labels))} classes; model 1 in {args.batches} shuffled batches")
        print(f"model 1, one run: pairwise F {once}")
        print(f"model 1, {args.batches} batches (the catalogue migrated): pairwise F {before}")
        print(f"migration to model 2: agreement {migration.agreement:.3f} (to model 1 itself: {itself.agreement:.3f})")
        print(
            f"  {migration.images:,} images, {migration.embedded:,} embedded again, {migration.clusters} clusters: "
            f"{migration.seconds:.1f} s ({wall:.1f} s with opening the model), "
            f"{1000 * migration.seconds / migration.images:.2f} s per 1,000 images, "
            f"{migration.embed_seconds / migration.seconds:.0%} of it embedding"
        )
        if revision is not None:
            print(
                f"  then revised in the new space (run {revision.run}): {revision.changed_ids} ids changed "
                f"({revision.churn:.1%}), within cluster.max_churn"
            )
        print(f"  clusters keeping all their members, name and state: {kept} of {len(every)}")
        print(f"  confirmed clusters among them: {confirmed_kept} of {len(confirmed)}")
        print(f"migrated catalogue: pairwise F {f_score(migrated)}")
        print(f"model 2, one run (fresh catalogue): pairwise F {f_score(fresh)}")
        gap = fresh["pairwise_f1"] - migrated["pairwise_f1"]
        print(f"F of the fresh one-run catalogue minus the migrated one: {gap:+.3f} (target: within 0.02)")


if __name__ == "__main__":
    main()
