"""Clustering at scale: replearn's sparse threshold graph against the seed's dense-matrix recursive algorithm.

Data: Gaussian blobs on the unit sphere in 128 dims (mean cluster size 50, log-normal sizes) plus 5 %
uniform noise images, shuffled. Within a blob similarities are ~0.8, between blobs ~0 +- 0.09; the
threshold is 0.6 and min_size 3.

1. seed vs replearn at 2k and 10k: the seed's algorithm (a dense N x N similarity matrix and a recursive
   tagging function, written below as the baseline with sys.setrecursionlimit raised) against
   `cluster_embeddings`; time, peak memory, and whether the cluster ids are identical.
2. replearn alone at 100k (exact blocked graph) and at 1M (faiss IVF kNN graph).
3. pairwise F1 of the approximate graph against the exact one at 100k.
4. refinement: does mutual kNN help when stray images bridge two classes?
5. growth: 200 scheduled runs of 5,000 images into one catalogue (`cluster_embeddings_into`), half of each
   batch from 250 classes never seen before and half from classes seen before, so clusters, pool and
   images all grow (one million images in the end). A run's cost must follow its batch, not the history:
   the last run may take at most 1.5x run 2, and the bytes a run writes stay flat.
6. one-shot (--one-shot N): the stage on N images at once, to time the same call on two versions of the code.

Every measurement runs in a fresh process; peak memory is the process's high-water mark (VmHWM, reset
after the data is generated) minus its resident size at that point, so it counts what the algorithm
allocates, faiss included.

    python benchmarks/cluster.py              # the full set (about ten minutes on 2 cores)
    python benchmarks/cluster.py --quick      # 2k/10k comparison and 20k stages only
    python benchmarks/cluster.py --growth-only
    PYTHONPATH=<other checkout>/src python benchmarks/cluster.py --one-shot 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.clustering.components import number_by_size
from replearn.clustering.methods import cluster_embeddings
from replearn.clustering.metrics import clustering_scores, singleton_unclustered
from replearn.config import ClusterConfig

DIM = 128
THRESHOLD = 0.6
MIN_SIZE = 3
MEAN_SIZE = 50
NOISE = 0.05


def blobs_on_sphere(n: int, seed: int = 0, bridges: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors: blobs with log-normal sizes, 5 % noise (truth -1), and optional bridge images (truth -2)
    halfway between two blobs, similar enough to both to chain them together."""
    rng = np.random.default_rng(seed)
    clustered = n - int(n * NOISE) - bridges
    weights = rng.lognormal(0.0, 0.8, size=max(1, clustered // MEAN_SIZE))
    truth = rng.choice(len(weights), size=clustered, p=weights / weights.sum())
    centres = rng.standard_normal((len(weights), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = np.float32(0.45 / np.sqrt(DIM))
    points = centres[truth] + spread * rng.standard_normal((clustered, DIM), dtype=np.float32)
    pairs = rng.choice(len(weights), size=(bridges, 2))
    bridge_points = centres[pairs[:, 0]] + centres[pairs[:, 1]]
    bridge_points += 0.3 * spread * rng.standard_normal(bridge_points.shape, dtype=np.float32)
    noise = rng.standard_normal((n - clustered - bridges, DIM), dtype=np.float32)
    embeddings = np.concatenate([points, bridge_points, noise])
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = np.concatenate([truth, np.full(bridges, -2), np.full(len(noise), -1)])
    order = rng.permutation(n)
    return embeddings[order], labels[order]


def seed_clusters(embeddings: np.ndarray, threshold: float, min_size: int) -> np.ndarray:
    """The seed's algorithm: dense similarity matrix, recursive tagging from each untagged image, small -> 0.

    The neighbour scan of one row is vectorised (the seed's spirit, a fair baseline); the traversal is
    the seed's recursion, which needs the recursion limit raised to the largest cluster.
    """
    n = len(embeddings)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), n + 1000))
    similarity = embeddings @ embeddings.T
    labels = np.zeros(n, dtype=np.int64)

    def tag(i: int, cluster: int) -> None:
        labels[i] = cluster
        for j in np.nonzero(similarity[i] >= threshold)[0]:
            if labels[j] == 0:
                tag(int(j), cluster)

    cluster = 0
    for i in range(n):
        if labels[i] == 0:
            cluster += 1
            tag(i, cluster)
    return number_by_size(labels, min_size)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _measure(task: str, n: int, bridges: int, config: dict[str, Any], queue: Any) -> None:
    embeddings, truth = blobs_on_sphere(n, bridges=bridges)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    started = time.perf_counter()
    if task == "seed":
        ids = seed_clusters(embeddings, THRESHOLD, MIN_SIZE)
    else:
        ids = cluster_embeddings(embeddings, THRESHOLD, ClusterConfig(method="components", min_size=MIN_SIZE, **config))
    seconds = time.perf_counter() - started
    peak_mb = (_rss_kib("VmHWM") - before) / 1024
    queue.put((ids, truth, seconds, peak_mb))


def measure(task: str, n: int, bridges: int = 0, **config: Any) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Run one clustering in a fresh process: (cluster ids, truth, seconds, peak MB above the data)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(task, n, bridges, config, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def describe(ids: np.ndarray) -> str:
    return f"{len(np.unique(ids[ids > 0])):,} clusters, {np.mean(ids == 0):.1%} unclustered"


def compare_with_seed(sizes: list[int]) -> None:
    print("\n== seed (dense N x N + recursion) vs replearn (blocked sparse graph + csgraph)")
    columns = ("N", "seed s", "seed MB", "ours s", "ours MB", "speed-up", "memory")
    print(" ".join(f"{name:>9}" for name in columns), " identical")
    for n in sizes:
        seed_ids, _, seed_s, seed_mb = measure("seed", n)
        ours_ids, _, ours_s, ours_mb = measure("exact", n)
        same = bool(np.array_equal(seed_ids, ours_ids))
        print(
            f"{n:>9,} {seed_s:>9.2f} {seed_mb:>9.0f} {ours_s:>9.2f} {ours_mb:>9.0f} "
            f"{seed_s / ours_s:>8.1f}x {seed_mb / max(ours_mb, 1):>8.1f}x  {same} ({describe(ours_ids)})"
        )


def stage_alone(exact_n: int, approximate_n: int) -> None:
    print("\n== replearn alone")
    exact_ids, truth, seconds, peak = measure("exact", exact_n)
    print(f"exact        N={exact_n:>9,}: {seconds:7.1f} s, peak {peak:6.0f} MB, {describe(exact_ids)}")
    approx_ids, _, seconds, peak = measure("approximate", exact_n, exact_max_n=1)
    print(f"approx (IVF) N={exact_n:>9,}: {seconds:7.1f} s, peak {peak:6.0f} MB, {describe(approx_ids)}")
    agreement = clustering_scores(singleton_unclustered(exact_ids), approx_ids)
    print(
        f"approximate vs exact at N={exact_n:,}: pairwise precision {agreement['pairwise_precision']:.4f}, "
        f"recall {agreement['pairwise_recall']:.4f}, F1 {agreement['pairwise_f1']:.4f}, ARI {agreement['ari']:.4f}"
    )
    truth_ids = np.where(truth >= 0, truth + 1, 0)
    for name, ids in (("exact", exact_ids), ("approximate", approx_ids)):
        scores = clustering_scores(singleton_unclustered(truth_ids), ids)
        print(f"{name:>11} vs generating blobs: pairwise F1 {scores['pairwise_f1']:.4f}, NMI {scores['nmi']:.4f}")
    big_ids, _, seconds, peak = measure("approximate", approximate_n, exact_max_n=1)
    print(f"approx (IVF) N={approximate_n:>9,}: {seconds:7.1f} s, peak {peak:6.0f} MB, {describe(big_ids)}")


def refinement(n: int) -> None:
    print(f"\n== refinement at N={n:,} with 2 % bridge images between random pairs of blobs")
    for refine in ("none", "mutual_knn"):
        ids, truth, seconds, _ = measure("exact", n, bridges=n // 50, refine=refine, neighbors=32)
        truth_ids = singleton_unclustered(np.where(truth >= 0, truth + 1, 0))
        scores = clustering_scores(truth_ids, ids)
        print(
            f"refine={refine:<10} {seconds:6.1f} s  pairwise P {scores['pairwise_precision']:.4f} "
            f"R {scores['pairwise_recall']:.4f} F1 {scores['pairwise_f1']:.4f}  BCubed F1 {scores['bcubed_f1']:.4f}  "
            f"ARI {scores['ari']:.4f}  {describe(ids)}"
        )


def written_bytes() -> int:
    """Bytes this process has passed to write() so far (/proc/self/io wchar): what a run writes, whatever the file."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def growing_batch(run: int, size: int, centres: np.ndarray, new_classes: int, spread: float) -> ImageBatch:
    """Run `run`'s images: half from `new_classes` classes never seen before, half from classes seen before.

    Classes first appear in order, new_classes a run, so run r's new classes are rows (r-1)*new_classes
    on; the seen half draws from every class before them. Unique paths and digests.
    """
    rng = np.random.default_rng(run)
    first_new = (run - 1) * new_classes
    new = first_new + rng.integers(new_classes, size=size // 2)
    seen = rng.integers(first_new if first_new else new_classes, size=size - size // 2)
    labels = np.concatenate([new, seen])
    points = centres[labels] + spread * rng.standard_normal((size, DIM), dtype=np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    paths = [f"run{run:03d}/{label}/{i:05d}.png" for i, label in enumerate(labels)]
    return ImageBatch(paths=paths, sha256=[f"{run}-{i}" for i in range(size)], sources=paths, embeddings=points)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def growth(runs: int, batch: int, new_classes: int) -> None:
    """The catalogue's growth case: every run brings new classes, so clusters, pool and images all grow."""
    print(f"\n== growth: {runs} runs of {batch:,} images, half from {new_classes} new classes a run")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((runs * new_classes, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = np.float32(0.45 / np.sqrt(DIM))
    config = ClusterConfig(min_size=MIN_SIZE)  # the stage's default method
    seconds: list[float] = []
    megabytes: list[float] = []
    print(f"{'run':>4} {'history':>10} {'seconds':>8} {'MB written':>11} {'new clusters':>12} {'unclustered':>11}")
    with tempfile.TemporaryDirectory(prefix="replearn-growth-") as out:
        # Warm-up in another catalogue: run 1 must not carry the lazy imports (faiss, scikit-network).
        warm = growing_batch(1, 100, centres, new_classes, spread)
        cluster_embeddings_into(config, warm, Path(out) / "warm-up", THRESHOLD, "")
        for run in range(1, runs + 1):
            images = growing_batch(run, batch, centres, new_classes, spread)
            before = written_bytes()
            started = time.perf_counter()
            result = cluster_embeddings_into(config, images, Path(out) / "out", THRESHOLD, "benchmark")
            seconds.append(time.perf_counter() - started)
            megabytes.append((written_bytes() - before) / 1e6)
            written = megabytes[-1]
            if run in (1, 2, 5, 10) or run % 25 == 0 or run == runs:
                print(
                    f"{run:>4} {run * batch:>10,} {seconds[-1]:>8.2f} {written:>11.1f} "
                    f"{result.new_clusters:>12} {result.unclustered:>11}",
                    flush=True,
                )
        size = folder_bytes(Path(out) / "out" / "catalogue")
    print(f"run {runs} / run 2: {seconds[-1] / seconds[1]:.2f}x (goal <= 1.5x)")
    if runs > 20:
        print(
            f"run {runs} / run 20: {seconds[-1] / seconds[19]:.2f}x (the pool and the context are full by about run 15)"
        )
    last = seconds[-10:]
    print(f"mean of the last 10 runs / run 2: {np.mean(last) / seconds[1]:.2f}x, slowest run {max(seconds):.2f} s")
    print(f"all {runs} runs: {sum(seconds):.1f} s, {np.mean(seconds):.2f} s a run with compaction's share")
    # A run writes its own segments; every fourth run also merges a level (compaction), more rarely a
    # larger one: the median is what a run writes, the mean of many runs adds compaction's share.
    early, late = megabytes[1:21], megabytes[-20:]
    print(f"MB written a run, median: runs 2-21 {np.median(early):.1f}, last 20 runs {np.median(late):.1f}")
    print(f"MB written a run, mean with compaction: runs 2-21 {np.mean(early):.1f}, last 20 runs {np.mean(late):.1f}")
    print(f"catalogue: {size / 1e6:,.0f} MB for {runs * batch:,} images, {size / (runs * batch):,.0f} bytes an image")


def one_shot(n: int) -> None:
    """The stage on n images at once into a new OUT: the same call on the code before and after a change."""
    embeddings, _ = blobs_on_sphere(n)
    paths = [f"{i:07d}.png" for i in range(n)]
    batch = ImageBatch(paths=paths, sha256=paths, sources=paths, embeddings=embeddings)
    with tempfile.TemporaryDirectory(prefix="replearn-one-shot-") as out:
        started = time.perf_counter()
        result = cluster_embeddings_into(ClusterConfig(min_size=MIN_SIZE), batch, Path(out), THRESHOLD, "benchmark")
        seconds = time.perf_counter() - started
    print(
        f"one-shot stage N={n:,}: {seconds:.1f} s, {result.new_clusters:,} clusters, {result.unclustered:,} unclustered"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--compare", type=int, nargs="+", default=[2_000, 10_000], help="sizes vs the seed")
    parser.add_argument("--exact", type=int, default=100_000, help="size of the exact run")
    parser.add_argument("--approximate", type=int, default=1_000_000, help="size of the approximate run")
    parser.add_argument("--growth-runs", type=int, default=200, help="scheduled runs in the growth case")
    parser.add_argument("--growth-only", action="store_true", help="run the growth case alone")
    parser.add_argument("--one-shot", type=int, metavar="N", help="only the stage on N images at once")
    args = parser.parse_args()
    if args.one_shot:
        one_shot(args.one_shot)
        return
    if args.growth_only:
        growth(args.growth_runs, 5_000, 250)
        return
    exact, approximate = (20_000, 100_000) if args.quick else (args.exact, args.approximate)
    print(f"blobs on the sphere: dim {DIM}, threshold {THRESHOLD}, min_size {MIN_SIZE}, {NOISE:.0%} noise")
    compare_with_seed(args.compare)
    stage_alone(exact, approximate)
    refinement(20_000)
    growth(args.growth_runs, 5_000, 250)


if __name__ == "__main__":
    main()
