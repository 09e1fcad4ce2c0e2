"""Clustering quality against the field: every method on the same embeddings of two labelled inboxes.

Inboxes, embedded once with the exported default model (outputs/model.onnx, `dvc repro`):

- demo: data/inbox, 62 classes x 4 images (`make demo`), fonts of every bundled family;
- held-out: 62 classes x 40 images rendered (seed 2) from the fonts of the test family only
  (preprocess.split.test_groups / the split seed: HK Grotesk by default), a family that training never saw.

Every method's labels go through the stage's own rule: clusters smaller than cluster.min_size go to 0,
and every image in 0 counts as a singleton. Scores are replearn.clustering.metrics.clustering_scores.
Infomap (igraph, GPL) and FINCH are benchmark-only: `pip install -e '.[bench]'`.

    python benchmarks/cluster_quality.py                     # both inboxes, about a minute
    python benchmarks/cluster_quality.py --per-class 20      # a smaller held-out inbox
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from replearn.catalogue.read import current_assignments, follow_merges, merges, read_table
from replearn.clustering.cluster import (
    ImageBatch,
    class_labels,
    cluster_embeddings_into,
    resolve_threshold,
    with_model_settings,
)
from replearn.clustering.components import number_by_size
from replearn.clustering.graph import knn_graph
from replearn.clustering.methods import cluster_embeddings, find_groups
from replearn.clustering.metrics import clustering_scores
from replearn.config import ClusterConfig, load_config
from replearn.data.chars import generate_chars
from replearn.data.fonts import discover_fonts
from replearn.embedding.onnx import OnnxEmbedder, embed_folder
from replearn.similarity import exact_knn, unit_rows

Method = Callable[[np.ndarray, float], np.ndarray]
GRAPH_K = 10


def graph_of(embeddings: np.ndarray, threshold: float, threshold_edges: bool) -> sp.csr_matrix:
    """The GRAPH_K-NN graph weighted by similarity: pairs at or above the threshold, or every non-negative pair."""
    return knn_graph(exact_knn(embeddings, GRAPH_K, memory_mb=64), threshold if threshold_edges else 0.0, mutual=False)


def seed_components(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    return cluster_embeddings(embeddings, threshold, ClusterConfig(min_size=1, method="components"))


def mutual_knn(k: int) -> Method:
    def method(embeddings: np.ndarray, threshold: float) -> np.ndarray:
        config = ClusterConfig(min_size=1, method="components", refine="mutual_knn", neighbors=k)
        return cluster_embeddings(embeddings, threshold, config)

    return method


def size_capped_components(cap: int, step: float = 0.01) -> Method:
    """CDP-style: components above `cap` images are split again at a threshold raised by `step`, until none is."""

    def method(embeddings: np.ndarray, threshold: float) -> np.ndarray:
        labels = np.zeros(len(embeddings), dtype=np.int64)
        pending = [(np.arange(len(embeddings)), threshold)]
        next_label = 0
        while pending:
            rows, level = pending.pop()
            parts = seed_components(embeddings[rows], level)
            for part in np.unique(parts):
                members = rows[parts == part]
                if len(members) > cap and level + step < 1.0:
                    pending.append((members, level + step))
                else:
                    labels[members] = next_label
                    next_label += 1
        return labels

    return method


def hdbscan(min_cluster_size: int) -> Method:
    def method(embeddings: np.ndarray, threshold: float) -> np.ndarray:
        from sklearn.cluster import HDBSCAN

        labels = HDBSCAN(min_cluster_size=min_cluster_size).fit_predict(embeddings)
        return np.where(labels >= 0, labels + 1, 0)

    return method


def finch_level(level: int) -> Method:
    def method(embeddings: np.ndarray, threshold: float) -> np.ndarray:
        from finch import FINCH

        partitions, counts, _ = FINCH(embeddings, distance="cosine", verbose=False)
        return partitions[:, min(level, partitions.shape[1] - 1)]

    return method


def leiden(threshold_edges: bool) -> Method:
    def method(embeddings: np.ndarray, threshold: float) -> np.ndarray:
        from sknetwork.clustering import Leiden

        return Leiden(random_state=0).fit_predict(graph_of(embeddings, threshold, threshold_edges))

    return method


def infomap(threshold_edges: bool) -> Method:
    def method(embeddings: np.ndarray, threshold: float) -> np.ndarray:
        import igraph

        graph = sp.triu(graph_of(embeddings, threshold, threshold_edges)).tocoo()
        network = igraph.Graph(n=len(embeddings), edges=list(zip(graph.row.tolist(), graph.col.tolist(), strict=True)))
        return np.asarray(network.community_infomap(edge_weights=graph.data.tolist()).membership)

    return method


def stage_method(config: ClusterConfig) -> Method:
    """The cluster stage at its own threshold (config.threshold: the model's, calibrated with the resolution)."""

    def method(embeddings: np.ndarray, pair_threshold: float) -> np.ndarray:
        return find_groups(embeddings, pair_threshold if config.threshold is None else config.threshold, config)

    return method


def methods(config: ClusterConfig) -> dict[str, Method]:
    return {
        f"replearn {config.method}, k={config.neighbors} (the default)": stage_method(config),
        "threshold + components (seed)": seed_components,
        "mutual kNN k=3 (the old demo profile)": mutual_knn(3),
        "mutual kNN k=32 (refine: mutual_knn)": mutual_knn(32),
        "size-capped components, cap 60 (CDP-style)": size_capped_components(60),
        "HDBSCAN min_cluster_size 5 (scikit-learn)": hdbscan(5),
        "FINCH, first partition": finch_level(0),
        "FINCH, second partition": finch_level(1),
        f"Leiden, kNN graph k={GRAPH_K} (scikit-network)": leiden(False),
        f"Leiden, kNN graph k={GRAPH_K} >= threshold": leiden(True),
        f"Infomap, kNN graph k={GRAPH_K} (igraph, GPL)": infomap(False),
        f"Infomap, kNN graph k={GRAPH_K} >= threshold": infomap(True),
    }


def held_out_inbox(folder: Path, family: str, per_class: int, size: int) -> Path:
    """Render the chars classes from one family's fonts only (seed 2, so no image repeats data/raw's)."""
    fonts = [font.path for font in discover_fonts("0") if font.family == family]
    if not fonts:
        raise SystemExit(f"no bundled font of family {family}")
    generate_chars(folder, per_class, size, seed=2, fonts=fonts, replace_fonts=True)
    return folder


def embed(model: OnnxEmbedder, folder: Path) -> tuple[np.ndarray, list[str]]:
    result = embed_folder(model, folder)
    return unit_rows(result.embeddings), class_labels(result.paths)


def score_all(name: str, embeddings: np.ndarray, labels: list[str], threshold: float, config: ClusterConfig) -> None:
    print(f"\n== {name}: {len(labels):,} images, {len(set(labels))} classes, pair threshold {threshold:.4f}")
    columns = f"{'pairwise F (P / R)':>22} {'BCubed F':>9} {'NMI':>6} {'in 0':>6} {'clusters':>8} {'s':>6}"
    header = f"{'method':<46} {columns}"
    print(header)
    for title, method in methods(config).items():
        started = time.perf_counter()
        try:
            ids = number_by_size(method(embeddings, threshold), config.min_size)
        except ImportError as error:
            print(f"{title:<46} skipped: {error}")
            continue
        seconds = time.perf_counter() - started
        s = clustering_scores(labels, ids)
        pairwise = f"{s['pairwise_f1']:.3f} ({s['pairwise_precision']:.3f} / {s['pairwise_recall']:.3f})"
        print(
            f"{title:<46} {pairwise:>22} {s['bcubed_f1']:>9.3f} {s['nmi']:>6.3f} "
            f"{s['unclustered_fraction']:>6.1%} {s['clusters']:>8} {seconds:>6.2f}",
            flush=True,
        )


def class_counts(embeddings: np.ndarray, labels: list[str], threshold: float, config: ClusterConfig) -> None:
    """The same inbox cut to its first 31, 12, 3 and 1 classes: does a method depend on how many there are?"""
    print("\n== held-out inbox cut to fewer classes: pairwise F (in 0)")
    names = sorted(set(labels))
    chosen = {title: method for title, method in methods(config).items() if "Infomap, kNN graph k=10 (" in title}
    chosen = {"replearn default": stage_method(config), "threshold + components (seed)": seed_components, **chosen}
    print(f"{'method':<46} " + " ".join(f"{f'{n} classes':>14}" for n in (62, 31, 12, 3, 1)))
    for title, method in chosen.items():
        cells = []
        for count in (62, 31, 12, 3, 1):
            keep = np.isin(labels, names[:count])
            try:
                ids = number_by_size(method(embeddings[keep], threshold), config.min_size)
            except ImportError:
                cells.append("skipped")
                continue
            s = clustering_scores(np.asarray(labels)[keep], ids)
            cells.append(f"{s['pairwise_f1']:.3f} ({s['unclustered_fraction']:.0%})")
        print(f"{title:<46} " + " ".join(f"{cell:>14}" for cell in cells), flush=True)


def feed_in_batches(
    out: Path,
    images: ImageBatch,
    threshold: float,
    config: ClusterConfig,
    batches: int,
    model_id: str,
    shuffle: int = 0,
) -> None:
    """Cluster the images into OUT's catalogue in `batches` runs, shuffled (seed `shuffle`), as a schedule would."""
    order = np.random.default_rng(shuffle).permutation(len(images.paths))
    for part in np.array_split(order, batches):
        batch = ImageBatch(
            paths=[images.paths[i] for i in part],
            sha256=[images.sha256[i] for i in part],
            sources=[images.sources[i] for i in part],
            embeddings=images.embeddings[part],
        )
        cluster_embeddings_into(config, batch, out, threshold, model_id)


def current_ids(out: Path, paths: list[str]) -> np.ndarray:
    """The current cluster of each path in OUT's catalogue, merges followed."""
    view = current_assignments(out).set_index("path")
    return follow_merges(view.loc[paths, "cluster_id"].to_numpy(), merges(out))


def stage_assignments(
    embeddings: np.ndarray, labels: list[str], threshold: float, config: ClusterConfig, batches: int, shuffle: int
) -> tuple[np.ndarray, pd.DataFrame]:
    """Current cluster ids (merges followed) after feeding the inbox to the stage in `batches` shuffled runs,
    and the catalogue's runs table (each run's churn, splits, dissolves and merges)."""
    paths = [f"{labels[i]}/{i:06d}.png" for i in range(len(labels))]
    images = ImageBatch(paths=paths, sha256=[str(i) for i in range(len(paths))], sources=paths, embeddings=embeddings)
    with tempfile.TemporaryDirectory(prefix="replearn-incremental-") as out:
        feed_in_batches(Path(out), images, threshold, config, batches, "benchmark", shuffle)
        return current_ids(Path(out), paths), read_table(Path(out), "runs")


def incremental_vs_one_shot(embeddings: np.ndarray, labels: list[str], threshold: float, config: ClusterConfig) -> None:
    """One run, then 10 batches in four shuffled orders: pairwise F and the churn of runs 2-10 (mean, max)."""
    print("\n== the cluster stage: one run vs 10 scheduled batches of the same inbox (four orders)")
    scores = []
    for batches, shuffle in [(1, 0), (10, 0), (10, 1), (10, 2), (10, 3)]:
        started = time.perf_counter()
        ids, runs = stage_assignments(embeddings, labels, threshold, config, batches, shuffle)
        s = clustering_scores(labels, ids)
        churn = runs["churn"].iloc[1:]
        revised = runs[["split", "dissolved", "merged"]].sum()
        print(
            f"{batches:>3} run(s), order {shuffle}: pairwise F {s['pairwise_f1']:.3f} ({s['pairwise_precision']:.3f} / "
            f"{s['pairwise_recall']:.3f}), in 0 {s['unclustered_fraction']:.1%}, {s['clusters']} clusters; "
            f"churn mean {churn.mean() if len(churn) else 0:.2%}, max {churn.max() if len(churn) else 0:.2%}; "
            f"{revised['split']} splits, {revised['dissolved']} dissolved, {revised['merged']} merges; "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        if batches > 1:
            scores.append(s["pairwise_f1"])
    print(f"10 batches, mean of the four orders: pairwise F {np.mean(scores):.3f}")


def stage_settings(config: ClusterConfig, model: OnnxEmbedder, path: Path) -> ClusterConfig:
    """The cluster stage's settings for this model: its threshold and resolution unless params.yaml sets them."""
    threshold = resolve_threshold(config, model.metadata, path)
    return with_model_settings(config, model.metadata).model_copy(update={"threshold": threshold})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("outputs/model.onnx"))
    parser.add_argument("--demo-inbox", type=Path, default=Path("data/inbox"))
    parser.add_argument("--family", default="HKGrotesk", help="typeface family of the held-out inbox")
    parser.add_argument("--per-class", type=int, default=40, help="images per class of the held-out inbox")
    args = parser.parse_args()
    config = load_config(Path("params.yaml"))
    model = OnnxEmbedder(args.model, provider="cpu")
    threshold = model.metadata.threshold
    if threshold is None:
        raise SystemExit(f"{args.model} carries no calibrated threshold")
    # The stage's own threshold; the other methods take the pair threshold, as the seed's rule does.
    config.cluster = stage_settings(config.cluster, model, args.model)
    stage_threshold = config.cluster.threshold
    assert stage_threshold is not None
    print(
        f"model {args.model}: pair threshold {threshold:.4f}; the cluster stage: threshold {stage_threshold:.4f}, "
        f"resolution {config.cluster.resolution}"
    )
    if args.demo_inbox.is_dir():
        score_all(f"demo inbox {args.demo_inbox}", *embed(model, args.demo_inbox), threshold, config.cluster)
    with tempfile.TemporaryDirectory(prefix="replearn-inbox-") as folder:
        inbox = held_out_inbox(Path(folder) / "inbox", args.family, args.per_class, config.data.size)
        title = f"held-out inbox: family {args.family}, {args.per_class} per class"
        embeddings, labels = embed(model, inbox)
        score_all(title, embeddings, labels, threshold, config.cluster)
        class_counts(embeddings, labels, threshold, config.cluster)
        incremental_vs_one_shot(embeddings, labels, stage_threshold, config.cluster)


if __name__ == "__main__":
    main()
