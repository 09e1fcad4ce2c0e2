"""A new model migrates the catalogue: ids, names, states and merges kept, files gone keep their id, one commit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from replearn.catalogue.corrections import merge_clusters, move_images, name_cluster, reject_images, split_cluster
from replearn.catalogue.indexes import index_path_of
from replearn.catalogue.lineage import cluster_history
from replearn.catalogue.migration import MIGRATION_FILE, Migration, migrate_catalogue
from replearn.catalogue.read import current_assignments, follow_merges, merges, read_table
from replearn.catalogue.search import search_embeddings
from replearn.catalogue.segments import vectors_of
from replearn.catalogue.store import catalogue_lock, load_catalogue
from replearn.cli import app
from replearn.config import load_config
from replearn.embedding.onnx import OnnxEmbedder, embed_folder
from test_cluster_report import write_projection_model

runner = CliRunner()
SETTINGS = ["--threshold", "0.5", "--min-size", "2"]


def write_classes(root: Path, classes: range, per_class: int = 6) -> None:
    """Class c: one random picture plus a little noise per image, so any random projection keeps the classes apart."""
    for c in classes:
        base = np.random.default_rng(c).integers(0, 256, size=(32, 32, 3))
        noise = np.random.default_rng(1000 + c)
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(base + noise.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture()
def models(tmp_path: Path) -> tuple[Path, Path]:
    """Two tiny ONNX models with different projections and dimensions: their embeddings are not comparable."""
    old, new = tmp_path / "old.onnx", tmp_path / "new.onnx"
    write_projection_model(old, dim=16, seed=0)
    write_projection_model(new, dim=12, seed=1)
    return old, new


def cluster(model: Path, inbox: Path, out: Path) -> str:
    result = runner.invoke(app, ["cluster", str(model), str(inbox), str(out), *SETTINGS], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def catalogue_of(tmp_path: Path, model: Path) -> tuple[Path, Path]:
    """An inbox of five classes clustered in two runs by `model`: (inbox, OUT)."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    write_classes(inbox, range(3))
    cluster(model, inbox, out)
    write_classes(inbox, range(3, 5))
    cluster(model, inbox, out)
    return inbox, out


def migrate(out: Path, model: Path, model_id: str = "sha256:new") -> Migration:
    with catalogue_lock(out):
        config = load_config(None, ["cluster.min_size=2"])
        return migrate_catalogue(load_catalogue(out), OnnxEmbedder(model, provider="cpu"), model_id, 0.5, config)


def test_migration_keeps_every_id_name_state_and_merge_and_remakes_the_space(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    old_model, new_model = models
    inbox, out = catalogue_of(tmp_path, old_model)
    name_cluster(out, 1, "ones")  # run 3
    merge_clusters(out, [4, 5])  # run 4
    images_before = read_table(out, "images").set_index("key")
    clusters_before = read_table(out, "clusters").set_index("id")
    assert len(clusters_before) == 5 and (images_before["cluster_id"] > 0).all()
    gone = images_before.index[images_before["path"] == "class_0/0.png"][0]
    changed = images_before.index[images_before["path"] == "class_3/1.png"][0]
    (inbox / "class_0" / "0.png").unlink()
    shutil.copy(inbox / "class_4" / "2.png", inbox / "class_3" / "1.png")  # same path, other content

    migration = migrate(out, new_model)

    assert (migration.images, migration.embedded, migration.missing, migration.clusters) == (30, 28, 2, 5)
    catalogue = load_catalogue(out)
    assert (catalogue.model_id, catalogue.embedding_dim, catalogue.run) == ("sha256:new", 12, 5)
    assert catalogue.next_cluster_id == 6
    clusters = read_table(out, "clusters", embeddings=True).set_index("id")
    kept = ["state", "name", "size", "created_run", "merged_into"]
    assert clusters[kept].equals(clusters_before[kept])
    assert clusters.loc[1, "name"] == "ones" and clusters.loc[5, "merged_into"] == 4
    images = read_table(out, "images", embeddings=True).set_index("key")
    assert images["cluster_id"].equals(images_before.loc[images.index, "cluster_id"])  # every image keeps its id
    missing = images.loc[[gone, changed]]
    assert missing["embedding"].isna().all() and missing["similarity"].isna().all()

    readable = images.drop(index=[gone, changed])
    fresh = embed_folder(OnnxEmbedder(new_model, provider="cpu"), inbox, names=readable["path"].tolist())
    assert np.allclose(np.stack(readable["embedding"]), fresh.embeddings, atol=1e-6)
    for cluster_id, row in clusters.iterrows():  # each sum is its readable members' sum in the new space,
        members = readable["cluster_id"].isin([cluster_id, *({5} if cluster_id == 4 else set())]).to_numpy()
        assert np.allclose(row["sum"], fresh.embeddings[members].sum(axis=0), atol=1e-5)
        assert set(row["exemplars"]) == set(readable.loc[members, "digest"])
    # The fresh images segment's index is in the new space: each readable image finds itself first, and every
    # other readable image after it, but never one without an embedding.
    assert index_path_of(catalogue.directory, catalogue.images.segments[0].file).is_file()
    found = search_embeddings(out, fresh.embeddings, readable["path"].tolist(), clusters=0, images=30).images
    assert found[found["rank"] == 1]["path"].tolist() == readable["path"].tolist()
    assert found.groupby("query")["path"].nunique().eq(28).all() and len(found) == 28 * 28

    events = read_table(out, "events")
    migrated = events[events["kind"] == "migrated"].set_index("cluster_id")
    assert set(migrated["actor"]) == {"run"}
    assert migrated["images"].to_dict() == readable["cluster_id"].value_counts().sort_index().to_dict()
    # (cluster 5, merged into 4, counts in 4's sum and exemplars as in its size)
    runs = read_table(out, "runs")
    assert runs.iloc[-1][["run", "model_id", "threshold"]].tolist() == [5, "sha256:new", 0.5]
    summary = json.loads((out / "runs" / "run-000005" / MIGRATION_FILE).read_text())
    assert summary["embedded"] == 28 and summary["agreement"] == migration.agreement


def test_migrating_into_the_same_space_keeps_the_sums_and_scores_the_agreement_by_hand(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    old_model, _ = models
    _, out = catalogue_of(tmp_path, old_model)
    merge_clusters(out, [1, 2])
    images = read_table(out, "images", embeddings=True)
    clusters = read_table(out, "clusters", embeddings=True)
    live = clusters[clusters["merged_into"] == 0]
    prototypes = np.stack(live["sum"])  # cluster 1's covers cluster 2, merged into it
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    nearest = live["id"].to_numpy()[(np.stack(images["embedding"]) @ prototypes.T).argmax(axis=1)]
    owners = follow_merges(images["cluster_id"].to_numpy(), {2: 1})
    expected = float(np.mean(nearest == owners))
    assert 24 / 30 <= expected <= 1  # cluster 2's six images count as cluster 1's, and in its prototype

    migration = migrate(out, old_model, model_id="sha256:a-copy")

    assert migration.agreement == pytest.approx(expected)
    after = read_table(out, "clusters", embeddings=True).set_index("id")
    assert np.allclose(np.stack(after.loc[clusters["id"], "sum"]), np.stack(clusters["sum"]), atol=1e-5)


def test_a_cluster_whose_files_are_all_gone_keeps_its_id_but_takes_no_new_image(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    old_model, new_model = models
    inbox, out = catalogue_of(tmp_path, old_model)
    ids = read_table(out, "images").set_index("path")["cluster_id"]
    lost = int(ids["class_2/0.png"])
    shutil.rmtree(inbox / "class_2")

    migrate(out, new_model)

    clusters = read_table(out, "clusters", embeddings=True).set_index("id")
    assert clusters.loc[lost, "size"] == 6 and clusters.loc[lost, "cohesion"] == 0.0
    assert len(clusters.loc[lost, "exemplars"]) == 0 and not np.any(clusters.loc[lost, "sum"])
    write_classes(tmp_path / "again", range(2, 3))  # class 2 comes back as new files
    back = embed_folder(OnnxEmbedder(new_model, provider="cpu"), tmp_path / "again").embeddings
    assert lost not in load_catalogue(out).nearest_clusters(back, nprobe=1)
    catalogue = load_catalogue(out)
    images = read_table(out, "images")
    assert not set(catalogue.pool) & set(images.loc[images["path"].str.startswith("class_2"), "digest"])
    assert vectors_of(catalogue.images.segment(0), "embedding", 12).shape == (30, 12)


def test_a_catalogue_of_unclustered_images_migrates_its_pool(tmp_path: Path, models: tuple[Path, Path]) -> None:
    old_model, new_model = models
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    write_classes(inbox, range(4), per_class=1)  # no two alike: every image stays in the pool
    cluster(old_model, inbox, out)
    pool = load_catalogue(out).pool

    migration = migrate(out, new_model)

    catalogue = load_catalogue(out)
    assert (migration.images, migration.clusters) == (4, 0) and np.isnan(migration.agreement)
    assert catalogue.pool.tolist() == pool.tolist() and not catalogue.clusters.segments
    write_classes(inbox, range(4), per_class=2)  # a second image of each: the pool's images now form clusters
    cluster(new_model, inbox, out)
    assert (read_table(out, "images")["cluster_id"] > 0).all()


def test_the_cli_migrates_a_catalogue_to_a_new_model_then_clusters_the_batch(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    old_model, new_model = models
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    write_classes(inbox, range(3))
    cluster(old_model, inbox, out)
    before = read_table(out, "images").set_index("path")["cluster_id"]
    write_classes(inbox, range(3, 5))

    printed = cluster(new_model, inbox, out)

    # run 2 migrates, run 3 revises the clusters in the new space, run 4 clusters the batch
    assert (
        "migrated the catalogue (run 2)" in printed and "clustering run 3" in printed and "clustering run 4" in printed
    )
    assert (out / "runs" / "run-000002" / MIGRATION_FILE).is_file()
    after = read_table(out, "images").set_index("path")["cluster_id"]
    assert after[before.index].equals(before)  # the old images keep their ids
    assert sorted(after.drop(index=before.index).unique()) == [4, 5]  # the new classes get new ids
    assert load_catalogue(out).embedding_dim == 12
    assert "nothing new among 30 files: the catalogue is unchanged" in cluster(new_model, inbox, out)
    assert "migrated the catalogue (run 5)" in cluster(old_model, inbox, out)  # and back, with nothing new


def test_corrections_survive_three_runs_and_a_new_model(tmp_path: Path, models: tuple[Path, Path]) -> None:
    """Name, merge, split, move and reject; three more runs; a new model: nothing undone, the history whole."""
    old_model, new_model = models
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    write_classes(inbox, range(4))
    cluster(old_model, inbox, out)
    stored = read_table(out, "images").set_index("path")["cluster_id"]
    a, b, c, d = (int(stored[f"class_{k}/0.png"]) for k in range(4))
    name_cluster(out, a, "zeros")
    merge_clusters(out, [b, c])  # a person says classes 1 and 2 are one
    split_cluster(out, d, images=["class_3/0.png", "class_3/1.png", "class_3/2.png"])
    move_images(out, a, ["class_3/5.png"])
    reject_images(out, ["class_0/4.png"])
    before = dict(zip(*current(out), strict=True))
    split_off = before["class_3/0.png"]

    for extra in range(4, 7):  # three scheduled runs: a new class each, and two more images of class 0
        write_classes(inbox, range(extra, extra + 1))
        write_classes(inbox, range(1), per_class=6 + extra - 3)
        cluster(old_model, inbox, out)
    cluster(new_model, inbox, out)  # migrates, revises in the new space, nothing new to cluster

    after = dict(zip(*current(out), strict=True))
    assert {path: after[path] for path in before} == before  # no correction undone
    assert after["class_0/4.png"] != a and after["class_0/6.png"] == a  # the rejected image stays out
    clusters = read_table(out, "clusters").set_index("id")
    assert clusters.loc[a, ["name", "state"]].tolist() == ["zeros", "confirmed"] and clusters.loc[c, "merged_into"] == b
    assert (clusters.loc[[a, b, d, split_off], "state"] == "confirmed").all()
    kinds = {cluster_id: set(group["kind"]) for cluster_id, group in read_table(out, "events").groupby("cluster_id")}
    assert {"created", "named", "moved", "rejected", "migrated"} <= kinds[a]
    assert {"merged_into", "migrated"} <= kinds[c] and {"split_from", "migrated"} <= kinds[split_off]
    history = cluster_history(out, a)
    assert history["kind"].tolist()[0] == "created" and "migrated" in history["kind"].tolist()


def current(out: Path) -> tuple[list[str], list[int]]:
    """Every image's path and its current cluster, merges followed."""
    table = current_assignments(out)
    return table["path"].tolist(), follow_merges(table["cluster_id"].to_numpy(), merges(out)).tolist()
