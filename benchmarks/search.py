"""`replearn search`: does it name the right cluster, and how fast does it answer against a million images?

(a) Quality. The held-out inbox of benchmarks/cluster_quality.py (62 classes x 40 images of a typeface
family training never saw) is embedded with the model; the first image of each class (by path) is
left out and the rest are clustered into a catalogue by the cluster stage (its threshold and
resolution from the model). For every class whose images are mostly (more than half) in one cluster,
merges followed, the left-out image is searched for through the Python API (search_images, the model
embeds it): the share whose first cluster hit is that cluster. Target: at least 90 %.

(b) Speed. A catalogue of N synthetic 128-d images (blobs of 20 around random centres, so 50,000
clusters for a million) is committed in runs of --batch images with store.commit_change, as
benchmarks/catalogue_store.py builds its stores, with compaction as runs do. 1,000 queries (new points
near random centres) are searched as one batch: the cluster part (the prototype indexes, through
search_embeddings with images=0), the image-neighbour part (the images segments' indexes, through
nearest_images) and the whole search are timed, each --repeat times, then 10 queries one at a time,
with the load average printed beside them. The 10 nearest images are compared with an exact scan of
every embedding (recall@10, and the scan's time: the search before the images indexes). Target: at
most 2 s for the batch.

    python benchmarks/search.py --model outputs/model.onnx --images 1000000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
from cluster_quality import held_out_inbox

from replearn.artifacts.hashing import sha256_file
from replearn.catalogue.read import current_assignments, follow_merges, merges
from replearn.catalogue.search import nearest_images, search_embeddings, search_images
from replearn.catalogue.segments import column_array, vector_column, vectors_of
from replearn.catalogue.store import (
    Catalogue,
    CatalogueChange,
    clusters_schema,
    commit_change,
    compact,
    images_schema,
    key_digests,
    load_catalogue,
    now,
    runs_table,
)
from replearn.clustering.cluster import (
    ImageBatch,
    class_labels,
    cluster_embeddings_into,
    resolve_threshold,
    with_model_settings,
)
from replearn.config import ClusterConfig, load_config
from replearn.embedding.onnx import OnnxEmbedder, embed_folder

DIM, BLOB, QUERIES, NOISE = 128, 20, 1_000, 0.6
SINGLE = 10  # queries timed one at a time
RECALL_AT = 10
NPROBE = ClusterConfig().nprobe
WIDER_NPROBE = (64, 256)  # IVF lists searched per clusters segment, against cluster.nprobe


def quality(model_path: Path, family: str, per_class: int) -> None:
    """(a): the share of left-out images whose first hit is the cluster holding most of their class."""
    config = load_config(Path("params.yaml"))
    model = OnnxEmbedder(model_path, provider="cpu")
    threshold = resolve_threshold(config.cluster, model.metadata, model_path)
    settings = with_model_settings(config.cluster, model.metadata)
    with tempfile.TemporaryDirectory(prefix="replearn-search-") as folder:
        inbox = held_out_inbox(Path(folder) / "inbox", family, per_class, config.data.size)
        embedded = embed_folder(model, inbox)
        labels = class_labels(embedded.paths)
        left_out = {label: i for i, label in reversed(list(enumerate(labels)))}  # the first image of each class
        kept = [i for i in range(len(labels)) if i not in set(left_out.values())]
        paths = [embedded.paths[i] for i in kept]
        batch = ImageBatch(
            paths, [sha256_file(inbox / p) for p in paths], [str(inbox / p) for p in paths], embedded.embeddings[kept]
        )
        out = Path(folder) / "out"
        started = time.perf_counter()
        cluster_embeddings_into(settings, batch, out, threshold, f"sha256:{sha256_file(model_path)}")
        built = time.perf_counter() - started
        assignments = current_assignments(out)
        clusters = follow_merges(assignments["cluster_id"].to_numpy(), merges(out))
        classes = np.array(class_labels(assignments["path"].tolist()))
        majority = {}
        for label in sorted(set(classes)):
            ids, counts = np.unique(clusters[(classes == label) & (clusters > 0)], return_counts=True)
            if len(ids) and counts.max() * 2 > (classes == label).sum():
                majority[label] = int(ids[counts.argmax()])
        queries = [inbox / embedded.paths[left_out[label]] for label in majority]
        started = time.perf_counter()
        result = search_images(model_path, out, queries, clusters=3, images=5, config=config)
        seconds = time.perf_counter() - started
        first = result.clusters[result.clusters["rank"] == 1].set_index("query")
        expected = {str(inbox / embedded.paths[left_out[label]]): cluster for label, cluster in majority.items()}
        right = [first.loc[q, "cluster_id"] == cluster for q, cluster in expected.items() if q in first.index]
        holders = {cluster: label for label, cluster in majority.items()}
        misses = [
            f"{Path(q).relative_to(inbox)}: its class's cluster {cluster}, first hit {first.loc[q, 'cluster_id']} "
            f"(of class {holders.get(first.loc[q, 'cluster_id'], '-')}) at {first.loc[q, 'similarity']:.3f}"
            for q, cluster in expected.items()
            if q in first.index and first.loc[q, "cluster_id"] != cluster
        ]
        passing = [bool(first.loc[q, "passes"]) for q in expected if q in first.index]
        top_images = result.images[result.images["rank"] == 1]
        same_class = [
            Path(q).relative_to(inbox).parts[0] == path.split("/", 1)[0]
            for q, path in zip(top_images["query"], top_images["path"], strict=True)
        ]
    print(f"== (a) quality: held-out inbox, family {family}, {per_class} per class, model {model_path}")
    print(f"catalogue: {len(kept):,} images clustered in {built:.1f} s at threshold {threshold:.4f}")
    print(f"classes with a cluster holding most of their images: {len(majority)} of {len(left_out)}")
    print(f"first cluster hit is that cluster: {sum(right)} of {len(expected)} = {sum(right) / len(expected):.1%}")
    print(f"  ... and passes the threshold: {sum(passing)} of {len(expected)}")
    for miss in misses:
        print(f"  missed: {miss}")
    print(f"first image hit of the same class: {sum(same_class)} of {len(same_class)}")
    print(f"search of {len(queries)} images through the model (embedding included): {seconds:.2f} s")


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def synthetic_catalogue(out: Path, images: int, batch: int, seed: int = 0) -> np.ndarray:
    """Commit `images` synthetic images in runs of `batch` (BLOB a cluster); returns the cluster centres."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((images // BLOB, DIM)))
    catalogue = Catalogue(directory=out / "catalogue", model_id="synthetic", embedding_dim=DIM)
    for run, start in enumerate(range(0, images, batch), start=1):
        n = min(batch, images - start)
        members = np.arange(start, start + n) // BLOB  # index of each image's cluster; ids are index + 1
        vectors = unit(centres[members] + NOISE * rng.standard_normal((n, DIM)) / np.sqrt(DIM))
        keys = [f"r{run:04d}/{i:07d}.png@{run}-{i}" for i in range(start, start + n)]
        ids = np.unique(members)
        sums = np.zeros((len(ids), DIM))
        np.add.at(sums, members - ids[0], vectors.astype(np.float64))
        m = len(ids)
        image_rows = pa.table(
            {
                "digest": pa.array(key_digests(keys), pa.uint64()),
                "key": keys,
                "path": [key.split("@")[0] for key in keys],
                "source": keys,
                "sha256": keys,
                "run": pa.array(np.full(n, run), pa.int64()),
                "cluster_id": pa.array(members + 1, pa.int64()),
                "similarity": pa.array(np.einsum("ij,ij->i", vectors, unit(sums)[members - ids[0]]), pa.float64()),
                "changed_run": pa.array(np.full(n, run), pa.int64()),
                "embedding": vector_column(vectors, pa.float32()),
            },
            schema=images_schema(DIM),
        )
        cluster_rows = pa.table(
            {
                "id": pa.array(ids + 1, pa.int64()),
                "state": ["automatic"] * m,
                "name": pa.array([None] * m, pa.string()),
                "size": pa.array(np.full(m, BLOB), pa.int64()),
                "sum": vector_column(sums, pa.float64()),
                "cohesion": pa.array(np.linalg.norm(sums, axis=1) / BLOB, pa.float64()),
                "created_run": pa.array(np.full(m, run), pa.int64()),
                "changed_run": pa.array(np.full(m, run), pa.int64()),
                "merged_into": pa.array(np.zeros(m, np.int64), pa.int64()),
                "exemplars": pa.array([[] for _ in range(m)], pa.list_(pa.uint64())),
            },
            schema=clusters_schema(DIM),
        )
        runs = runs_table([{"run": run, "time": now(), "threshold": 0.6, "model_id": "synthetic"}])
        catalogue.run = run
        change = CatalogueChange(image_rows, cluster_rows, None, runs, np.zeros(0, np.uint64), int(ids[-1]) + 2)
        commit_change(catalogue, change, seed=0)
        compact(catalogue, seed=0)
    return centres


def speed(images: int, batch: int, repeat: int) -> None:
    """(b): 1,000 queries against a synthetic catalogue of `images`: the cluster part and the image part."""
    with tempfile.TemporaryDirectory(prefix="replearn-search-") as folder:
        out = Path(folder)
        started = time.perf_counter()
        centres = synthetic_catalogue(out, images, batch)
        built = time.perf_counter() - started
        catalogue = load_catalogue(out)
        segments = {name: len(table.segments) for name, table in catalogue.tables.items() if table.segments}
        rng = np.random.default_rng(1)
        truth = rng.integers(0, len(centres), QUERIES)
        queries = unit(centres[truth] + NOISE * rng.standard_normal((QUERIES, DIM)) / np.sqrt(DIM))
        names = [f"q{i}" for i in range(QUERIES)]
        print(f"\n== (b) speed: {images:,} synthetic {DIM}-d images, {len(centres):,} clusters, {QUERIES:,} queries")
        print(f"catalogue built in {built:.1f} s, segments {segments}")
        print(f"load average before timing (1, 5, 15 min): {os.getloadavg()}, {os.cpu_count()} cores")
        cluster_times, image_times, whole_times = [], [], []
        for _ in range(repeat):
            started = time.perf_counter()
            result = search_embeddings(out, queries, names, clusters=3, images=0)
            cluster_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            nearest_images(load_catalogue(out), queries, 5, NPROBE)
            image_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            search_embeddings(out, queries, names, clusters=3, images=5)
            whole_times.append(time.perf_counter() - started)
        first = result.clusters[result.clusters["rank"] == 1]["cluster_id"].to_numpy()
        timings = ", ".join(f"{t:.2f}" for t in cluster_times)
        print(f"cluster part (3 nearest clusters, all segments' indexes): {timings} s")
        print(f"  first hit is the query's own cluster: {np.mean(first == truth + 1):.1%} (nprobe: cluster.nprobe)")
        for nprobe in WIDER_NPROBE:
            started = time.perf_counter()
            wider = search_embeddings(out, queries, names, clusters=3, images=0, nprobe=nprobe)
            seconds = time.perf_counter() - started
            hits = wider.clusters[wider.clusters["rank"] == 1]["cluster_id"].to_numpy()
            share = np.mean(hits == truth + 1)
            print(f"  nprobe {nprobe}: {seconds:.2f} s, first hit is the query's own cluster: {share:.1%}")
        print(
            f"image part (5 nearest images, images segments' indexes): {', '.join(f'{t:.2f}' for t in image_times)} s"
        )
        print(f"whole search (3 clusters and 5 images): {', '.join(f'{t:.2f}' for t in whole_times)} s")
        image_recall(load_catalogue(out), queries)
        single_clusters, single_images = [], []
        for i in range(SINGLE):  # a service asks one image at a time
            started = time.perf_counter()
            search_embeddings(out, queries[i : i + 1], names[i : i + 1], clusters=3, images=0)
            single_clusters.append(time.perf_counter() - started)
            started = time.perf_counter()
            nearest_images(load_catalogue(out), queries[i : i + 1], 5, NPROBE)
            single_images.append(time.perf_counter() - started)
        print(f"one query at a time ({SINGLE}), median: clusters {np.median(single_clusters):.3f} s, ", end="")
        print(f"images {np.median(single_images):.3f} s")
        print(f"load average after: {os.getloadavg()}")


def image_recall(catalogue: Catalogue, queries: np.ndarray) -> None:
    """Recall@10 of the indexed nearest images against an exact scan of every embedding (the search before them).

    Every synthetic image is written once, so every row is live and the exact answer is one brute-force search.
    """
    table = catalogue.images
    parts = [table.segment(i) for i in range(len(table.segments))]
    started = time.perf_counter()
    embeddings = np.concatenate([vectors_of(part, "embedding", DIM) for part in parts])
    _, exact = faiss.knn(queries, embeddings, RECALL_AT, faiss.METRIC_INNER_PRODUCT)
    exact_seconds = time.perf_counter() - started
    truth = np.concatenate([column_array(part, "digest") for part in parts])[exact]
    for nprobe in (NPROBE, *WIDER_NPROBE):
        started = time.perf_counter()
        segments, rows, _ = nearest_images(catalogue, queries, RECALL_AT, nprobe)
        seconds = time.perf_counter() - started
        found = column_array(table.take(segments.ravel(), rows.ravel()), "digest").reshape(segments.shape)
        recall = np.mean([len(set(f) & set(t)) / RECALL_AT for f, t in zip(found, truth, strict=True)])
        print(f"  {RECALL_AT} nearest images, nprobe {nprobe}: {seconds:.2f} s, recall@{RECALL_AT} {recall:.4f}")
    print(f"  exact scan of every embedding for the same {RECALL_AT} (the baseline): {exact_seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("outputs/model.onnx"))
    parser.add_argument("--family", default="HKGrotesk", help="typeface family of the held-out inbox")
    parser.add_argument("--per-class", type=int, default=40, help="images per class of the held-out inbox")
    parser.add_argument("--images", type=int, default=1_000_000, help="synthetic catalogue size for the speed part")
    parser.add_argument("--batch", type=int, default=50_000, help="images per committed run of the synthetic catalogue")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    if not args.skip_quality:
        quality(args.model, args.family, args.per_class)
    speed(args.images, args.batch, args.repeat)


if __name__ == "__main__":
    main()
