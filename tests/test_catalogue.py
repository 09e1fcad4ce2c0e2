"""The cluster catalogue: stable ids across runs, idempotent reruns, the lock, crash safety, compaction, format 1."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from replearn.catalogue import store as store_module
from replearn.catalogue.read import current_assignments, read_table
from replearn.catalogue.store import CatalogueLockedError, catalogue_lock, load_catalogue
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.config import ClusterConfig
from replearn.errors import UserError

DIM = 16
CONFIG = ClusterConfig(min_size=3)
THRESHOLD = 0.8


def make_batch(blob_sizes: dict[int, int], prefix: str, seed: int) -> ImageBatch:
    """Images around orthogonal centres: blob b's images are named <prefix>/b<b>_<i>.png."""
    rng = np.random.default_rng(seed)
    paths, vectors = [], []
    for blob, size in blob_sizes.items():
        for i in range(size):
            paths.append(f"{prefix}/b{blob}_{i}.png")
            vectors.append(np.eye(DIM)[blob] + 0.05 * rng.normal(size=DIM))
    embeddings = np.array(vectors, dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    digests = [f"sha-{path}" for path in paths]
    return ImageBatch(paths=paths, sha256=digests, sources=[f"/nowhere/{p}" for p in paths], embeddings=embeddings)


def run(out: Path, batch: ImageBatch, config: ClusterConfig = CONFIG, model_id: str = "model-a"):
    return cluster_embeddings_into(config, batch, out, THRESHOLD, model_id)


def current(out: Path) -> dict[str, int]:
    table = current_assignments(out)
    return dict(zip(table["path"], table["cluster_id"], strict=True))


def blob_of(path: str) -> int:
    return int(path.split("/b")[1].split("_")[0])


def test_first_run_numbers_clusters_by_size(tmp_path: Path) -> None:
    result = run(tmp_path, make_batch({0: 4, 1: 6, 2: 2}, "day1", seed=0))
    ids = current(tmp_path)
    assert {blob_of(p): c for p, c in ids.items()} == {0: 2, 1: 1, 2: 0}
    assert (result.run, result.new_clusters, result.unclustered) == (1, 2, 2)
    run_dir = tmp_path / "runs" / "run-000001"
    assignments = pd.read_csv(run_dir / "assignments.csv")
    assert list(assignments.columns) == ["path", "cluster_id", "similarity"]
    assert assignments.loc[assignments["cluster_id"] > 0, "similarity"].between(0.9, 1.0).all()
    assert assignments.loc[assignments["cluster_id"] == 0, "similarity"].isna().all()
    summary = (run_dir / "clusters.json").read_text()
    assert '"size": 6' in summary and '"cohesion"' in summary


def test_incremental_run_keeps_ids_and_is_idempotent(tmp_path: Path) -> None:
    run(tmp_path, make_batch({0: 4, 1: 6}, "day1", seed=0))
    before = current(tmp_path)

    second = make_batch({0: 3, 3: 5, 4: 1}, "day2", seed=1)
    result = run(tmp_path, second)
    after = current(tmp_path)

    assert {p: after[p] for p in before} == before  # existing images keep their ids
    day2 = {p: c for p, c in after.items() if p.startswith("day2")}
    old_blob0_id = before["day1/b0_0.png"]
    assert all(c == old_blob0_id for p, c in day2.items() if blob_of(p) == 0)
    assert {c for p, c in day2.items() if blob_of(p) == 3} == {3}  # new id after 1 and 2, never reused
    assert result.assigned_to_existing == 3 and result.new_clusters == 1

    manifest = (tmp_path / "catalogue" / "manifest.json").read_bytes()
    again = run(tmp_path, second)
    assert again.run is None
    assert (tmp_path / "catalogue" / "manifest.json").read_bytes() == manifest
    assert current(tmp_path) == after
    assert not (tmp_path / "runs" / "run-000003").exists()


def test_changed_content_at_the_same_path_is_a_new_image(tmp_path: Path) -> None:
    batch = make_batch({0: 3}, "inbox", seed=0)
    run(tmp_path, batch)
    batch.sha256[0] = "sha-edited"
    result = run(tmp_path, batch)
    assert result.run == 2 and result.new_images == 1


def test_unclustered_images_can_form_a_cluster_later(tmp_path: Path) -> None:
    run(tmp_path, make_batch({0: 5}, "day1", seed=0))
    first = run(tmp_path, make_batch({1: 2}, "day2", seed=1))
    assert first.unclustered == 2
    second = run(tmp_path, make_batch({1: 1}, "day3", seed=2))
    ids = current(tmp_path)
    assert second.new_clusters == 1
    assert {ids["day2/b1_0.png"], ids["day2/b1_1.png"], ids["day3/b1_0.png"]} == {2}
    assert load_catalogue(tmp_path).pool.size == 0


def test_a_concurrent_run_is_refused_by_the_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from replearn.catalogue.store import catalogue_lock\n"
            f"with catalogue_lock(Path({str(tmp_path)!r})):\n    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(CatalogueLockedError, match=f"pid {holder.pid}"):
            run(tmp_path, make_batch({0: 3}, "day1", seed=0))
    finally:
        holder.kill()
        holder.wait()
    assert run(tmp_path, make_batch({0: 3}, "day1", seed=0)).run == 1  # the lock died with its holder


def test_the_lock_is_exclusive_within_one_process(tmp_path: Path) -> None:
    with catalogue_lock(tmp_path), pytest.raises(CatalogueLockedError), catalogue_lock(tmp_path):
        pass


def test_a_crash_before_the_commit_leaves_the_previous_catalogue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(tmp_path, make_batch({0: 4}, "day1", seed=0))
    manifest = (tmp_path / "catalogue" / "manifest.json").read_bytes()
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "catalogue").rglob("*"))

    def power_cut(*args: object) -> None:
        raise OSError("simulated crash before the manifest was replaced")

    monkeypatch.setattr(store_module, "commit_manifest", power_cut)
    with pytest.raises(OSError, match="simulated crash"):
        run(tmp_path, make_batch({5: 4}, "day2", seed=1))
    monkeypatch.undo()

    assert (tmp_path / "catalogue" / "manifest.json").read_bytes() == manifest
    catalogue = load_catalogue(tmp_path)
    assert catalogue.run == 1 and read_table(tmp_path, "clusters")["id"].tolist() == [1]
    retry = run(tmp_path, make_batch({5: 4}, "day2", seed=1))
    assert retry.run == 2 and retry.new_clusters == 1
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "catalogue").rglob("*"))
    # A segment per table, the indexes of the clusters and images ones, a new pool; the old pool stays as the
    # undo point's.
    assert len(after) == len(files) + 7
    assert sum(path.parent.name == "neighbours" for path in after) == 2


def test_embeddings_of_another_model_are_refused_with_how_to_migrate(tmp_path: Path) -> None:
    run(tmp_path, make_batch({0: 3}, "day1", seed=0))
    with pytest.raises(UserError, match="another model .* Migrate it first: `replearn cluster NEW_MODEL.onnx"):
        run(tmp_path, make_batch({1: 3}, "day2", seed=1), model_id="model-b")


def test_a_first_batch_with_no_cluster_at_all_is_recorded_and_can_grow_later(tmp_path: Path) -> None:
    lonely = run(tmp_path, make_batch({0: 1, 1: 1, 2: 2}, "day1", seed=0))
    assert lonely.unclustered == 4 and lonely.new_clusters == 0
    assert set(current(tmp_path).values()) == {0}
    grown = run(tmp_path, make_batch({2: 1}, "day2", seed=1))
    assert grown.new_clusters == 1
    assert current(tmp_path)["day1/b2_0.png"] == current(tmp_path)["day2/b2_0.png"] == 1


FIXTURE = Path(__file__).parent / "fixtures" / "registry_format1"


def test_a_format1_registry_is_converted_with_every_id_member_merge_and_pool_image(tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(FIXTURE, out)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in (out / "registry").iterdir())
    old = pd.read_csv(out / "assignments.csv").drop_duplicates("path", keep="last").set_index("path")

    fixture_vectors = np.eye(16, dtype=np.float32)[[3, 3, 3]]  # three more images of the fixture's cluster 4
    later = ImageBatch(
        paths=[f"3/r4-{i}.png" for i in range(3)],
        sha256=[f"04{i:04d}" for i in range(3)],
        sources=[f"/inbox/3/r4-{i}.png" for i in range(3)],
        embeddings=fixture_vectors,
    )
    result = cluster_embeddings_into(CONFIG, later, out, 0.6, "sha256:fixture")

    assert sorted((p.relative_to(out), p.read_bytes()) for p in (out / "registry").iterdir()) == before
    images = read_table(out, "images").set_index("path")
    assert images.loc[old.index, "cluster_id"].tolist() == old["cluster_id"].tolist()  # every member, its id
    assert images.loc[later.paths, "cluster_id"].tolist() == [4, 4, 4] and result.run == 4
    clusters = read_table(out, "clusters").set_index("id")
    assert clusters.index.tolist() == [1, 2, 3, 4] and clusters.loc[2, "merged_into"] == 1
    assert clusters.loc[4, "size"] == 4 + 3
    events = read_table(out, "events")
    assert sorted(events.loc[events["kind"] == "created", "cluster_id"]) == [1, 2, 3, 4]
    merge = events[events["kind"] == "merged_into"]
    assert merge[["cluster_id", "other_id", "run"]].values.tolist() == [[2, 1, 2]]
    assert read_table(out, "runs")["run"].tolist() == [1, 2, 3, 4]
    catalogue = load_catalogue(out)
    pool = catalogue.image_rows(catalogue.pool).column("key").to_pylist()
    assert len(pool) == 4 and all(key.startswith("noise/") for key in pool)  # the pool kept, with embeddings
    assert catalogue.next_cluster_id == 5  # ids are never reused


def test_compaction_merges_levels_and_reads_the_same(tmp_path: Path) -> None:
    for day in range(9):
        run(tmp_path, make_batch({day % 3: 3, 3 + day: 1}, f"day{day}", seed=day))
    catalogue = load_catalogue(tmp_path)
    assert [segment.level for segment in catalogue.images.segments] == [1, 1, 0]  # 4 + 4 merged, one new
    assert [s.level for s in catalogue.tables["runs"].segments] == [1, 1, 0]
    images = read_table(tmp_path, "images")
    assert len(images) == 9 * 4 and images["key"].is_unique
    assert sorted(read_table(tmp_path, "runs")["run"]) == list(range(1, 10))
    on_disk = {p.relative_to(catalogue.directory).as_posix() for p in catalogue.directory.rglob("*.arrow")}
    assert on_disk == {s.file for t in catalogue.tables.values() for s in t.segments}  # merged parts are gone
    assert current(tmp_path)["day8/b2_0.png"] == current(tmp_path)["day2/b2_0.png"]


def test_reading_a_missing_catalogue_or_table_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no cluster catalogue yet"):
        read_table(tmp_path, "images")
    run(tmp_path, make_batch({0: 3}, "day1", seed=0))
    with pytest.raises(UserError, match="no table 'members'; its tables are images, clusters, events, runs, rejec"):
        read_table(tmp_path, "members")
    assert "embedding" not in read_table(tmp_path, "images") and "sum" not in read_table(tmp_path, "clusters")
    embeddings = np.stack(read_table(tmp_path, "images", embeddings=True)["embedding"].to_numpy())
    assert embeddings.shape == (3, DIM) and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
