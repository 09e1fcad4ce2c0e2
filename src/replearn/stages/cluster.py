"""The cluster stage: cluster the new images of INBOX into OUT's catalogue with stable ids (clustering/cluster.py)."""

from __future__ import annotations

from pathlib import Path

from replearn.clustering.cluster import ClusterRun, cluster_images
from replearn.config import Config


def stage(config: Config, model: Path, inbox: Path, out_dir: Path) -> ClusterRun:
    """One scheduled run; with cluster.evaluate_labels the inbox's class folders score the clusters."""
    return cluster_images(config, Path(model), Path(inbox), Path(out_dir), evaluate=config.cluster.evaluate_labels)
