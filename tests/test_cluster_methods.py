"""The cluster stage's methods and scheduled runs on hand-made embeddings whose answer is known.

Points sit on the unit circle (or a few orthogonal directions), so every similarity is a cosine
that can be read off the angles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from replearn.artifacts.metadata import ModelMetadata
from replearn.catalogue.read import current_assignments, follow_merges, merges
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into, resolve_threshold
from replearn.clustering.graph import knn_graph
from replearn.clustering.methods import cluster_embeddings, effective_resolution
from replearn.clustering.metrics import clustering_scores
from replearn.config import ClusterConfig
from replearn.similarity import exact_knn


def on_circle(degrees: list[float]) -> np.ndarray:
    angles = np.radians(degrees)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


# Blob A at 0-5 degrees, blob B at 35-40, one bridge at 20: at threshold cos 21 = 0.934 the bridge links
# to the near edge of both blobs (cos 15-20 >= 0.94), while A and B are 30+ degrees apart (cos <= 0.87).
BLOB_A = [0, 1, 2, 3, 4, 5]
BLOB_B = [35, 36, 37, 38, 39, 40]
BRIDGE = [20]
THRESHOLD = float(np.cos(np.radians(21)))


def test_the_bridge_chains_components_but_not_louvain() -> None:
    embeddings = on_circle(BLOB_A + BLOB_B + BRIDGE)
    components = cluster_embeddings(embeddings, THRESHOLD, ClusterConfig(method="components", min_size=3))
    assert components.tolist() == [1] * 13  # the seed's rule: one bridge makes one cluster of both blobs

    louvain = ClusterConfig(method="louvain", min_size=3, neighbors=6, resolution=1.0)
    ids = cluster_embeddings(embeddings, THRESHOLD, louvain)
    a, b, bridge = ids[:6], ids[6:12], ids[12]
    assert len(set(a)) == 1 and len(set(b)) == 1 and a[0] != b[0] and 0 not in (a[0], b[0])
    assert bridge in (a[0], b[0])  # the bridge joins one side and no longer merges them


def test_louvain_never_joins_what_the_threshold_keeps_apart() -> None:
    embeddings = on_circle(BLOB_A + [90, 91, 92])
    ids = cluster_embeddings(embeddings, THRESHOLD, ClusterConfig(resolution=0.01))
    assert ids.tolist() == [1] * 6 + [2] * 3


def test_one_class_is_not_shattered_whatever_its_size() -> None:
    """The resolution counts per connected component: one class of 4 or of 60 images is one graph, r = rho."""
    rng = np.random.default_rng(0)
    for size in (4, 60):
        points = np.eye(16)[np.zeros(size, dtype=int)] + 0.05 * rng.normal(size=(size, 16))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        config = ClusterConfig(resolution=0.4)
        graph = knn_graph(exact_knn(points.astype(np.float32), config.neighbors, memory_mb=1), 0.9, mutual=False)
        assert effective_resolution(config, graph) == pytest.approx(0.4)
        assert cluster_embeddings(points, 0.9, config).tolist() == [1] * size


def batch(paths: list[str], embeddings: np.ndarray) -> ImageBatch:
    return ImageBatch(paths=paths, sha256=paths, sources=paths, embeddings=embeddings)


def view(out: Path) -> dict[str, int]:
    table = current_assignments(out)
    return dict(zip(table["path"], table["cluster_id"], strict=True))


def test_clusters_found_to_be_one_are_merged_on_record_not_renumbered(tmp_path: Path) -> None:
    # Run 1: two tight groups of one class, 27 degrees apart, too far to link at the threshold.
    # The merge changes 3 of 7 ids, so the churn budget is lifted (with the default 3 %, a 7-image catalogue waits).
    config = ClusterConfig(method="components", min_size=3, max_churn=1.0)
    first = on_circle([0, 1, 2, 3, 30, 31, 32])
    cluster_embeddings_into(config, batch([f"a/{i}.png" for i in range(7)], first), tmp_path, THRESHOLD, "m")
    before = view(tmp_path)
    assert sorted(set(before.values())) == [1, 2]
    # Run 2: images in the gap link both groups' exemplars into one group of the window.
    gap = on_circle([8, 13, 18, 23, 26])
    result = cluster_embeddings_into(config, batch([f"b/{i}.png" for i in range(5)], gap), tmp_path, THRESHOLD, "m")
    summary = json.loads((tmp_path / "runs" / "run-000002" / "clusters.json").read_text())
    assert summary["merged_this_run"] == {"2": 1} and merges(tmp_path) == {2: 1}
    assert {c["id"]: c["merged_into"] for c in summary["clusters"]} == {1: None, 2: 1}
    assert result.new_clusters == 0 and result.assigned_to_existing == 5
    after = view(tmp_path)
    assert {path: after[path] for path in before} == before  # nobody was renumbered
    assert {after[f"b/{i}.png"] for i in range(5)} == {1}
    assert "Merged this run" in (tmp_path / "runs" / "run-000002" / "report.html").read_text()
    # Merged clusters take no new images: one near group 2's centre now goes to cluster 1.
    cluster_embeddings_into(config, batch(["c/0.png"], on_circle([31.5])), tmp_path, THRESHOLD, "m")
    assert view(tmp_path)["c/0.png"] == 1


def test_scheduled_batches_match_one_run(tmp_path: Path) -> None:
    """Six directions x 12 noisy images, fed in one run and in 4 shuffled runs: the same partition."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 12)
    points = np.eye(16)[labels] + 0.08 * rng.normal(size=(72, 16))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    paths = [f"{label}/{i}.png" for i, label in enumerate(labels)]
    config = ClusterConfig(neighbors=8)
    scores = []
    for runs in (1, 4):
        out = tmp_path / f"runs-{runs}"
        for part in np.array_split(rng.permutation(72), runs):
            cluster_embeddings_into(config, batch([paths[i] for i in part], points[part]), out, 0.8, "m")
        ids = follow_merges(np.array([view(out)[path] for path in paths]), merges(out))
        scores.append(clustering_scores(labels, ids)["pairwise_f1"])
    assert scores[0] == pytest.approx(1.0) and scores[1] >= scores[0] - 0.02


def test_the_pool_keeps_only_the_newest_unclustered_images(tmp_path: Path) -> None:
    config = ClusterConfig(method="components", min_size=3, pool_max=2)
    scattered = on_circle([0, 60, 120, 180, 240])
    result = cluster_embeddings_into(config, batch([f"s/{i}.png" for i in range(5)], scattered), tmp_path, 0.9, "m")
    summary = json.loads((result.run_dir / "clusters.json").read_text())
    assert (summary["unclustered"], summary["pool"], summary["retired_from_pool"]) == (5, 2, 3)
    assert set(view(tmp_path).values()) == {0}


@pytest.mark.parametrize(
    ("settings", "cluster_threshold", "expected"),
    [
        ({}, 0.8, 0.8),  # louvain: the threshold calibrated with the resolution
        ({"method": "components"}, 0.8, 0.9),  # the seed's rule: the pair threshold
        ({}, None, 0.9),  # a model exported before the cluster threshold was calibrated
        ({"threshold": 0.7}, 0.8, 0.7),  # cluster.threshold (--threshold) wins
    ],
)
def test_cluster_stage_threshold_comes_from_the_model(
    settings: dict, cluster_threshold: float | None, expected: float
) -> None:
    metadata = ModelMetadata(
        input_size=32,
        channel_order="RGB",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        embedding_dim=8,
        threshold=0.9,
        classes=("a", "b"),
        replearn_version="0",
        config_hash="0",
        data_version="0",
        resize_mode="pad",
        cluster_threshold=cluster_threshold,
    )
    assert resolve_threshold(ClusterConfig(**settings), metadata, Path("model.onnx")) == expected
