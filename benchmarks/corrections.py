"""What a person's correction costs on a catalogue of N images: the seconds of each `replearn clusters` command.

A catalogue is built by scheduled runs of 5,000 synthetic 128-d images (blobs of 20 images around
random centres, components at 0.6, so runs are quick), then each command runs once through the
Python API the CLI calls, and its seconds are printed. What grows with N is the scan of one images
column (cluster_id for show and split, path for images named by path) and the clusters table's
merged_into column; the rows a correction writes are those of its clusters and images.

    python benchmarks/corrections.py --images 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from replearn.catalogue.corrections import (
    confirm_clusters,
    merge_clusters,
    move_images,
    name_cluster,
    reject_images,
    split_cluster,
    undo_last,
)
from replearn.catalogue.lineage import cluster_history
from replearn.catalogue.read import list_clusters, show_cluster
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.clustering.methods import find_groups
from replearn.config import ClusterConfig

DIM, RUN, BLOB = 128, 5_000, 20
CONFIG = ClusterConfig(method="components", min_size=3)


def build(out: Path, images: int, seed: int = 0) -> None:
    """Scheduled runs of RUN images each, blobs of BLOB images around random centres."""
    rng = np.random.default_rng(seed)
    for run in range(images // RUN):
        centres = rng.normal(size=(RUN // BLOB, DIM))
        points = np.repeat(centres, BLOB, axis=0) + 0.3 * rng.normal(size=(RUN, DIM))
        paths = [f"r{run:04d}/{i:05d}.png" for i in range(RUN)]
        batch = ImageBatch(paths, paths, paths, points.astype(np.float32))
        cluster_embeddings_into(CONFIG, batch, out, 0.6, "synthetic")


def timed(name: str, call: Callable[[], object]) -> None:
    start = time.perf_counter()
    call()
    print(f"{name:<28} {time.perf_counter() - start:6.2f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        start = time.perf_counter()
        build(out, args.images)
        print(f"catalogue of {args.images:,} images built in {time.perf_counter() - start:.1f} s")
        members = show_cluster(out, 1).members["path"].tolist()
        timed("list", lambda: list_clusters(out))
        timed("show 1", lambda: show_cluster(out, 1))
        timed("name 1", lambda: name_cluster(out, 1, "one", CONFIG))
        timed("confirm 2 3", lambda: confirm_clusters(out, [2, 3], CONFIG))
        timed("merge 2 3", lambda: merge_clusters(out, [2, 3], CONFIG))
        timed("split 1 --images (3)", lambda: split_cluster(out, 1, images=members[:3], config=CONFIG))
        timed("split 2 (re-cluster)", lambda: split_cluster(out, 2, find_groups=find_groups, config=CONFIG))
        timed("move --to 4 (1 by path)", lambda: move_images(out, 4, members[3:4], CONFIG))
        timed("reject (1 by path)", lambda: reject_images(out, members[4:5], CONFIG))
        timed("history 1", lambda: cluster_history(out, 1))
        timed("undo", lambda: undo_last(out, CONFIG))


if __name__ == "__main__":
    main()
