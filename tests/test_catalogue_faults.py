"""kill -9 at random moments of scheduled runs, corrections, migrations and their compactions: nothing
committed is lost, nothing doubles."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from catalogue_checks import assert_rows_match_members
from replearn.catalogue.read import read_table
from replearn.catalogue.store import load_catalogue
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.config import ClusterConfig
from test_cluster_report import write_projection_model
from test_migration import catalogue_of, cluster, write_classes

BATCH = 12
# A child that clusters batch after batch into OUT, printing each batch once it is committed; batch i's
# images are always the same, so a batch killed before its commit is simply done again by the next child.
CHILD = f"""
import sys
from pathlib import Path
import numpy as np
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.config import ClusterConfig

out, first = Path(sys.argv[1]), int(sys.argv[2])
for i in range(first, first + 1000):
    rng = np.random.default_rng(i)
    labels = rng.integers(0, 6, size={BATCH})
    points = np.eye(16)[labels] + 0.05 * rng.normal(size=({BATCH}, 16))
    paths = [f"b{{i:04d}}/{{label}}_{{j}}.png" for j, label in enumerate(labels)]
    images = ImageBatch(paths=paths, sha256=paths, sources=paths, embeddings=points.astype(np.float32))
    cluster_embeddings_into(ClusterConfig(min_size=3), images, out, 0.8, "m")
    print(i, flush=True)
"""


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_committed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rng = np.random.default_rng(0)
    committed = -1
    for _ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(out), str(committed + 1)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.5 + rng.uniform(0.0, 1.5))  # imports take about a second; then runs and compactions
        child.kill()
        output, _ = child.communicate()
        committed = max([committed, *(int(line) for line in output.split())])

        catalogue = load_catalogue(out)  # it reads, whatever the moment of the kill
        if catalogue.run == 0:
            continue  # killed before its first commit (a slow start): nothing to lose yet
        images = read_table(out, "images")
        batches = images["path"].str.slice(1, 5).astype(int)
        assert images["key"].is_unique and images["cluster_id"].notna().all()
        assert set(batches) >= set(range(committed + 1))  # every batch reported committed is there ...
        assert set(batches) <= set(range(committed + 2))  # ... and at most the one killed after its commit
        assert len(images) == BATCH * len(set(batches))  # ... whole
        clusters = read_table(out, "clusters")
        assert clusters["size"].sum() == (images["cluster_id"] > 0).sum()  # each image counted once
        assert catalogue.run == len(set(batches)) == len(read_table(out, "runs"))
        committed = max(committed, *batches)
        on_disk = {p.relative_to(catalogue.directory).as_posix() for p in catalogue.directory.rglob("*.arrow")}
        named = {s.file for t in catalogue.tables.values() for s in t.segments}
        assert named <= on_disk  # leftovers of the killed run may remain until the next commit removes them
    assert committed >= 5  # enough runs, and compactions (every fourth run), were interrupted


# A child that corrects OUT step after step, reading which step is next from the catalogue's run counter, so
# each step is done exactly once whenever a kill falls: step i names cluster 1 (i % 3 == 0), undoes that name
# (i % 3 == 1), or moves x/0.png between clusters 1 and 2 (i % 3 == 2). Each commit and compaction is a target.
CORRECTIONS_CHILD = """
import sys
from pathlib import Path
from replearn.catalogue.corrections import move_images, name_cluster, undo_last
from replearn.catalogue.store import load_catalogue

out, base = Path(sys.argv[1]), int(sys.argv[2])
while True:
    i = load_catalogue(out).run - base
    if i % 3 == 0:
        name_cluster(out, 1, f"n{i}")
    elif i % 3 == 1:
        undo_last(out)
    else:
        move_images(out, 2 if (i // 3) % 2 == 0 else 1, ["x/0.png"])
    print(i, flush=True)
"""


def expected_after(steps: int) -> tuple[str | None, int]:
    """Cluster 1's name and x/0.png's cluster after `steps` steps of CORRECTIONS_CHILD."""
    last = steps - 1
    name = f"n{last}" if steps and last % 3 == 0 else None
    moves = [j for j in range(steps) if j % 3 == 2]
    return name, (2 if (moves[-1] // 3) % 2 == 0 else 1) if moves else 1


@pytest.mark.slow
def test_kill_9_during_corrections_loses_nothing_committed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    labels = np.array([0, 0, 0, 1, 1, 1, 0])
    points = np.eye(16)[labels].astype(np.float32)
    paths = [f"{label}/{j}.png" for j, label in enumerate(labels[:-1])] + ["x/0.png"]
    cluster_embeddings_into(ClusterConfig(min_size=3), ImageBatch(paths, paths, paths, points), out, 0.8, "m")
    base = load_catalogue(out).run
    rng = np.random.default_rng(1)
    done = -1
    for _ in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", CORRECTIONS_CHILD, str(out), str(base)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0 + rng.uniform(0.0, 1.5))  # imports take about a second; then a correction every few ms
        child.kill()
        output, _ = child.communicate()
        done = max([done, *(int(line) for line in output.split())])

        catalogue = load_catalogue(out)  # it reads, whatever the moment of the kill
        steps = catalogue.run - base
        assert (
            done + 1 <= steps <= done + 2
        )  # every step reported is there, and at most the one killed after its commit
        name, home = expected_after(steps)
        clusters = read_table(out, "clusters").set_index("id")
        assert (clusters.loc[1, "name"] if isinstance(clusters.loc[1, "name"], str) else None) == name
        assert read_table(out, "images").set_index("path").loc["x/0.png", "cluster_id"] == home
        events = read_table(out, "events")
        assert sorted(events.loc[events["actor"] == "person", "run"].unique()) == list(
            range(base + 1, base + steps + 1)
        )
        assert_rows_match_members(out)
        done = steps - 1
    assert done >= 10  # enough corrections, undos and compactions were interrupted


# A child that migrates OUT to another model, saying when it starts; the parent kills it at a random moment.
MIGRATION_CHILD = """
import sys
from pathlib import Path
from replearn.catalogue.migration import migrate_catalogue
from replearn.catalogue.store import catalogue_lock, load_catalogue
from replearn.config import load_config
from replearn.embedding.onnx import OnnxEmbedder

out, model = Path(sys.argv[1]), Path(sys.argv[2])
embedder = OnnxEmbedder(model, provider="cpu")
with catalogue_lock(out):
    catalogue = load_catalogue(out)
    print("start", flush=True)
    migrate_catalogue(catalogue, embedder, "sha256:new", 0.5, load_config(None, ["cluster.min_size=2"]))
print("done", flush=True)
"""


def migrate_in_child(out: Path, model: Path, kill_after: float | None) -> float:
    """Run MIGRATION_CHILD on OUT; kill -9 it `kill_after` seconds after it starts. Returns the seconds it ran."""
    child = subprocess.Popen([sys.executable, "-c", MIGRATION_CHILD, str(out), str(model)], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"start\n"
    started = time.perf_counter()
    if kill_after is None:
        assert child.stdout.readline() == b"done\n"
        child.wait()
    else:
        time.sleep(kill_after)
        child.kill()
        child.communicate()
    return time.perf_counter() - started


@pytest.mark.slow
def test_kill_9_during_a_migration_leaves_the_old_catalogue_or_the_new_one_whole(tmp_path: Path) -> None:
    old_model, new_model = tmp_path / "old.onnx", tmp_path / "new.onnx"
    write_projection_model(old_model, dim=16, seed=0)
    write_projection_model(new_model, dim=12, seed=1)
    inbox, built = catalogue_of(tmp_path, old_model)
    write_classes(inbox, range(5, 40), per_class=12)  # enough images that a migration takes a while
    cluster(old_model, inbox, built)
    manifest = (built / "catalogue" / "manifest.json").read_bytes()
    ids = read_table(built, "images").set_index("key")["cluster_id"]
    clusters = read_table(built, "clusters").drop(columns=["cohesion", "exemplars"])
    seconds = migrate_in_child(shutil.copytree(built, tmp_path / "whole"), new_model, kill_after=None)

    rng = np.random.default_rng(0)
    interrupted = 0
    for attempt in range(8):
        out = shutil.copytree(built, tmp_path / f"killed-{attempt}")
        migrate_in_child(out, new_model, kill_after=rng.uniform(0.0, seconds))
        if load_catalogue(out).model_id != "sha256:new":  # it reads, whatever the moment of the kill
            assert (out / "catalogue" / "manifest.json").read_bytes() == manifest  # the old catalogue, untouched
            interrupted += 1
            migrate_in_child(out, new_model, kill_after=None)  # and the next try migrates it
        images = read_table(out, "images", embeddings=True).set_index("key")
        assert len(images) == len(ids) and images["cluster_id"].equals(ids.loc[images.index])  # nothing lost
        assert images["embedding"].notna().all() and load_catalogue(out).embedding_dim == 12  # the new one, whole
        assert read_table(out, "clusters").drop(columns=["cohesion", "exemplars"]).equals(clusters)
        events = read_table(out, "events")
        assert sorted(events.loc[events["kind"] == "migrated", "cluster_id"]) == sorted(clusters["id"])
    assert interrupted >= 1  # some kills fell before the commit
