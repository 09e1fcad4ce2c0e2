"""Exact kNN for evaluation: replearn's blocked faiss search against scikit-learn's brute-force NearestNeighbors.

Both find the exact k nearest gallery rows of every query on unit vectors (scikit-learn through its
fastest exact path, euclidean distance, which orders unit vectors as cosine similarity does). The
script prints seconds, queries per second and the speed-up of faiss over scikit-learn, measured in
the same run on the same data, plus how many neighbour lists agree (ties may swap places).

    python benchmarks/evaluate.py               # 10k and 100k queries x 128 dims, galleries of equal size
    python benchmarks/evaluate.py --sizes 2000  # a quick check
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.neighbors import NearestNeighbors

from replearn.similarity import search_neighbors

DIM = 128
K = 10
MEMORY_MB = 256.0


def unit_rows(rows: int, seed: int) -> np.ndarray:
    points = np.random.default_rng(seed).standard_normal((rows, DIM), dtype=np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def timed(function, *args):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def with_faiss(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return search_neighbors(queries, gallery, K, memory_mb=MEMORY_MB)[1]


def with_sklearn(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    index = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="euclidean", n_jobs=-1).fit(gallery)
    return index.kneighbors(queries, return_distance=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="queries (= gallery rows)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"exact kNN, k={K}, {DIM} dims, float32 unit vectors, {os.cpu_count()} cores, load average {load:.1f}")
    print(f"{'queries x gallery':>20} {'faiss s':>9} {'sklearn s':>10} {'faiss q/s':>10} {'sklearn q/s':>12} "
          f"{'speed-up':>9} {'same lists':>11}")  # fmt: skip
    for size in args.sizes:
        queries, gallery = unit_rows(size, 0), unit_rows(size, 1)
        faiss_indices, faiss_seconds = timed(with_faiss, queries, gallery)
        sklearn_indices, sklearn_seconds = timed(with_sklearn, queries, gallery)
        agree = float(np.mean(np.all(np.sort(faiss_indices, axis=1) == np.sort(sklearn_indices, axis=1), axis=1)))
        print(
            f"{f'{size:,} x {size:,}':>20} {faiss_seconds:9.2f} {sklearn_seconds:10.2f} {size / faiss_seconds:10,.0f} "
            f"{size / sklearn_seconds:12,.0f} {sklearn_seconds / faiss_seconds:8.1f}x {agree:11.4f}"
        )


if __name__ == "__main__":
    main()
