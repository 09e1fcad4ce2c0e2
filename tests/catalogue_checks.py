"""Invariants of a catalogue that tests check after runs, corrections and kills."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from replearn.catalogue.members import merge_forest, subtree_of
from replearn.catalogue.read import read_table
from replearn.catalogue.store import load_catalogue


def assert_rows_match_members(out: Path) -> None:
    """Every active cluster's size and member sum are its members': its own images and those of the clusters
    merged into it (a merged cluster's row keeps them as they were when it was merged: later revisions of its
    owner move its images on). The manifest counts the clustered images. Every file the manifest and its undo
    point name exists.
    """
    catalogue = load_catalogue(out)
    forest = merge_forest(catalogue)
    images = read_table(out, "images", embeddings=True)
    assert images["key"].is_unique
    embeddings = np.stack(images["embedding"].to_numpy())
    clusters = read_table(out, "clusters", embeddings=True).set_index("id")
    for cluster_id, row in clusters[clusters["merged_into"] == 0].iterrows():
        inside = subtree_of([cluster_id], forest)
        members = images["cluster_id"].isin(inside).to_numpy()
        assert row["size"] == members.sum(), cluster_id
        assert np.allclose(np.asarray(row["sum"]), embeddings[members].sum(axis=0), atol=1e-5), cluster_id
    assert catalogue.assigned_images() == (images["cluster_id"] > 0).sum()
    states = [catalogue.manifest()] + ([catalogue.undo["state"]] if catalogue.undo else [])
    named = {s["file"] for state in states for segments in state["tables"].values() for s in segments}
    named |= {state["pool"] for state in states if state["pool"]}
    assert all((catalogue.directory / file).is_file() for file in named), named
