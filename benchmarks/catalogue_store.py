"""The catalogue's store, chosen by measurement: replearn's Arrow segments + faiss against LanceDB.

Both stores do what a scheduled run asks of its store, on the growth case of benchmarks/cluster.py
(runs of 5,000 images with 128-d embeddings, 250 new clusters a run, 2,500 clusters changed a run):

1. which of the batch's keys are known;
2. the nearest cluster prototype of each of the 5,000 new images;
3. append the 5,000 image rows (with embeddings) and the 2,500 changed cluster rows (new or updated).

replearn: catalogue/store.py (Table.find on memory-mapped digests, per-segment faiss indexes,
a segment per table and compaction). LanceDB (Apache-2.0, `pip install lancedb`): a table per kind,
`add`, `merge_insert` on the cluster id, a BTREE index on the image key and an IVF_FLAT index on the
prototypes (both built at run 10), `optimize()` every 10 runs, nearest prototypes with `search` in
chunks of 250 queries (all 5,000 at once run out of file handles under the default ulimit).

    python benchmarks/catalogue_store.py --runs 60
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from replearn.catalogue.segments import vector_column
from replearn.catalogue.store import (
    Catalogue,
    CatalogueChange,
    clusters_schema,
    commit_change,
    compact,
    images_schema,
    key_digests,
)

DIM = 128
BATCH = 5_000
NEW_CLUSTERS = 250
CHANGED_CLUSTERS = 2_500


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def run_rows(run: int, next_id: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(keys, embeddings, changed cluster ids, their prototypes) of run `run`."""
    rng = np.random.default_rng(run)
    keys = [f"run{run:04d}/{i:05d}.png@{run}-{i}" for i in range(BATCH)]
    new_ids = np.arange(next_id, next_id + NEW_CLUSTERS)
    old_ids = rng.integers(1, next_id, size=CHANGED_CLUSTERS - NEW_CLUSTERS) if next_id > 1 else np.zeros(0, int)
    changed = np.union1d(new_ids, old_ids).astype(np.int64)
    return keys, unit(rng, BATCH), changed, unit(rng, len(changed))


def replearn_store(directory: Path) -> Callable[[int, int], dict[str, float]]:
    catalogue = Catalogue(directory=directory / "catalogue", model_id="benchmark", embedding_dim=DIM)

    def one_run(run: int, next_id: int) -> dict[str, float]:
        keys, embeddings, changed, prototypes = run_rows(run, next_id)
        times = {}
        started = time.perf_counter()
        catalogue.known(keys)
        times["known"] = time.perf_counter() - started
        started = time.perf_counter()
        if catalogue.clusters.segments:
            catalogue.nearest_clusters(embeddings, nprobe=16)
        times["nearest"] = time.perf_counter() - started
        started = time.perf_counter()
        n = len(keys)
        images = pa.table(
            {
                "digest": pa.array(key_digests(keys), pa.uint64()),
                "key": keys,
                "path": keys,
                "source": keys,
                "sha256": keys,
                "run": pa.array(np.full(n, run), pa.int64()),
                "cluster_id": pa.array(np.zeros(n, np.int64), pa.int64()),
                "similarity": pa.array(np.zeros(n), pa.float64()),
                "changed_run": pa.array(np.full(n, run), pa.int64()),
                "embedding": vector_column(embeddings, pa.float32()),
            },
            schema=images_schema(DIM),
        )
        m = len(changed)
        clusters = pa.table(
            {
                "id": pa.array(changed, pa.int64()),
                "state": ["automatic"] * m,
                "name": pa.array([None] * m, pa.string()),
                "size": pa.array(np.ones(m, np.int64), pa.int64()),
                "sum": vector_column(prototypes.astype(np.float64), pa.float64()),
                "cohesion": pa.array(np.ones(m), pa.float64()),
                "created_run": pa.array(np.full(m, run), pa.int64()),
                "changed_run": pa.array(np.full(m, run), pa.int64()),
                "merged_into": pa.array(np.zeros(m, np.int64), pa.int64()),
                "exemplars": pa.array([[] for _ in range(m)], pa.list_(pa.uint64())),
            },
            schema=clusters_schema(DIM),
        )
        catalogue.run = run
        change = CatalogueChange(images, clusters, None, None, np.zeros(0, np.uint64), next_id + NEW_CLUSTERS)
        commit_change(catalogue, change, seed=0)
        compact(catalogue, seed=0)
        times["write"] = time.perf_counter() - started
        return times

    return one_run


def lancedb_store(directory: Path) -> Callable[[int, int], dict[str, float]]:
    import lancedb

    database = lancedb.connect(str(directory / "lancedb"))
    tables: dict[str, object] = {}

    def one_run(run: int, next_id: int) -> dict[str, float]:
        keys, embeddings, changed, prototypes = run_rows(run, next_id)
        times = {}
        started = time.perf_counter()
        if "images" in tables:
            listed = ",".join(f"'{key}'" for key in keys)
            tables["images"].count_rows(f"key IN ({listed})")
        times["known"] = time.perf_counter() - started
        started = time.perf_counter()
        if "clusters" in tables:
            for first in range(0, BATCH, 250):
                query = tables["clusters"].search(embeddings[first : first + 250]).limit(1)
                query.select(["id", "_distance"]).to_arrow()
        times["nearest"] = time.perf_counter() - started
        started = time.perf_counter()
        images = pa.table(
            {"key": keys, "run": np.full(BATCH, run), "embedding": vector_column(embeddings, pa.float32())}
        )
        clusters = pa.table({"id": changed, "vector": vector_column(prototypes, pa.float32())})
        if "images" not in tables:
            tables["images"] = database.create_table("images", images)
            tables["clusters"] = database.create_table("clusters", clusters)
        else:
            tables["images"].add(images)
            merge = tables["clusters"].merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
            merge.execute(clusters)
        if run == 10:
            tables["images"].create_scalar_index("key", index_type="BTREE")
            tables["clusters"].create_index(metric="cosine", vector_column_name="vector", index_type="IVF_FLAT")
        if run % 10 == 0:
            tables["images"].optimize()
            tables["clusters"].optimize()
        times["write"] = time.perf_counter() - started
        return times

    return one_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    stores = {"replearn": replearn_store}
    try:
        import lancedb  # noqa: F401

        stores["lancedb"] = lancedb_store
    except ImportError:
        print("lancedb is not installed (pip install lancedb): replearn's store alone")
    shown = {2, 10, 20} | set(range(0, args.runs + 1, 20)) | {args.runs}
    for name, make in stores.items():
        directory = Path(tempfile.mkdtemp(prefix=f"replearn-store-{name}-"))
        one_run = make(directory)
        print(f"\n== {name}: seconds a run for known keys, nearest prototypes, writes")
        totals = []
        for run in range(1, args.runs + 1):
            times = one_run(run, 1 + (run - 1) * NEW_CLUSTERS)
            totals.append(sum(times.values()))
            if run in shown:
                parts = "  ".join(f"{part} {seconds:6.3f}" for part, seconds in times.items())
                print(f"run {run:>4} ({run * BATCH:>9,} images): {totals[-1]:6.3f} s  ({parts})", flush=True)
        size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
        print(f"{name}: run {args.runs} / run 2 {totals[-1] / totals[1]:.2f}x; on disk {size / 1e6:,.0f} MB")
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
