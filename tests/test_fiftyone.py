"""The FiftyOne export against a real FiftyOne: its bundled mongod, in the throwaway folder conftest.py sets up.

The catalogue is built by real runs on exact unit-vector embeddings (as in test_corrections.py), with
real PNG files: cluster 1 = 4 x e0 (a), 2 = 3 x e1 (b), 3 = 3 x e2 (c), merged into 2 and named
"bees"; d/0 (e5) unclustered. Every similarity is 1 and every nearest neighbour is known by hand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from console_script import replearn
from replearn.catalogue.corrections import merge_clusters, name_cluster
from replearn.catalogue.fiftyone_export import (
    MAP_KEY,
    REJECT_TAG,
    SIMILARITY_KEY,
    export_to_fiftyone,
    import_fiftyone,
)
from replearn.catalogue.read import read_table
from replearn.catalogue.store import load_catalogue
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.config import ClusterConfig
from replearn.errors import UserError

needs_fiftyone = pytest.mark.skipif(
    importlib.util.find_spec("fiftyone") is None,
    reason="FiftyOne is not installed: pip install -e '.[fiftyone]' (make test installs it)",
)
DIM = 16
CONFIG = ClusterConfig(min_size=3, method="components")
E = np.eye(DIM)


def inbox_batch(inbox: Path, groups: dict[str, tuple[np.ndarray, int]], first: int = 0) -> ImageBatch:
    """`count` 8x8 PNG files of `vector` per group, inbox/<group>/<i>.png, each a different grey."""
    paths, sources, hashes, vectors = [], [], [], []
    for group, (vector, count) in groups.items():
        for i in range(first, first + count):
            source = inbox / group / f"{i}.png"
            source.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), 20 * i + len(group)).save(source)
            paths.append(f"{group}/{i}.png")
            sources.append(str(source))
            hashes.append(hashlib.sha256(source.read_bytes()).hexdigest())
            vectors.append(vector)
    return ImageBatch(paths=paths, sha256=hashes, sources=sources, embeddings=np.array(vectors, dtype=np.float32))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Run 1 clusters a, b, c and d; cluster 3 is merged into 2, which is named "bees" (so confirmed)."""
    groups = {"a": (E[0], 4), "b": (E[1], 3), "c": (E[2], 3), "d": (E[5], 1)}
    cluster_embeddings_into(CONFIG, inbox_batch(tmp_path / "inbox", groups), tmp_path / "out", 0.8, "model-a")
    merge_clusters(tmp_path / "out", [2, 3])
    name_cluster(tmp_path / "out", 2, "bees")
    return tmp_path / "out"


def samples(name: str) -> dict[str, dict[str, Any]]:
    """The dataset's samples by path: the fields replearn writes, the cluster label and the tags."""
    fo, _ = import_fiftyone()
    dataset = fo.load_dataset(name)
    fields = ["path", "filepath", "key", "cluster_id", "cluster_state", "cluster_name", "similarity", "tags"]
    columns = dataset.values([*fields, "cluster.label", "embedding"])
    rows = [dict(zip([*fields, "label", "embedding"], values, strict=True)) for values in zip(*columns, strict=True)]
    return {row["path"]: row for row in rows}


def person_events(out: Path) -> list[tuple[int, str, int, int, int]]:
    events = read_table(out, "events")
    person = events[events["actor"] == "person"]
    return [tuple(row) for row in person[["run", "kind", "cluster_id", "other_id", "images"]].itertuples(False)]


@needs_fiftyone
def test_dataset_holds_every_image_with_its_cluster_and_embedding(out: Path) -> None:
    result = export_to_fiftyone(out, "fo-fields", map_method="tsne")
    assert (result.samples, result.added, result.changed, result.removed) == (11, 11, 0, 0)
    assert result.map_method == "tsne" and result.corrections == []
    rows = samples("fo-fields")
    assert sorted(rows) == [
        *(f"a/{i}.png" for i in range(4)),
        *(f"{g}/{i}.png" for g in "bc" for i in range(3)),
        "d/0.png",
    ]
    images = read_table(out, "images").set_index("path")
    for path, row in rows.items():
        assert row["filepath"] == str(out.parent / "inbox" / path) and row["key"] == images.loc[path, "key"]
    expected = {
        "a": (1, "automatic", None, "1", 0),
        "b": (2, "confirmed", "bees", "2", 1),
        "c": (2, "confirmed", "bees", "2", 2),
    }
    for path, row in rows.items():
        if path.startswith("d/"):
            assert (row["cluster_id"], row["cluster_state"], row["cluster_name"], row["label"]) == (0, None, None, None)
            assert row["similarity"] is None and np.array_equal(row["embedding"], E[5])
            continue
        cluster_id, state, name, label, axis = expected[path[0]]
        assert (row["cluster_id"], row["cluster_state"], row["cluster_name"], row["label"]) == (
            cluster_id,
            state,
            name,
            label,
        )
        assert row["similarity"] == pytest.approx(1.0) and np.array_equal(row["embedding"], E[axis])


@needs_fiftyone
def test_similarity_index_and_map_answer_from_the_catalogue_embeddings(out: Path) -> None:
    export_to_fiftyone(out, "fo-brain", map_method="pca")
    fo, _ = import_fiftyone()
    dataset = fo.load_dataset("fo-brain")
    assert sorted(dataset.list_brain_runs()) == [MAP_KEY, SIMILARITY_KEY]
    a0 = dataset.match(fo.ViewField("path") == "a/0.png").first()
    nearest = dataset.sort_by_similarity(a0.id, k=4, brain_key=SIMILARITY_KEY).values("path")
    assert sorted(nearest) == [f"a/{i}.png" for i in range(4)]  # a/0 itself and the three images of its vector
    by_vector = dataset.sort_by_similarity(E[2], k=3, brain_key=SIMILARITY_KEY).values("path")
    assert sorted(by_vector) == [f"c/{i}.png" for i in range(3)]
    points = dataset.load_brain_results(MAP_KEY).points
    assert points.shape == (11, 2)
    # the map places images of one vector on one point: PCA of identical rows
    paths = dataset.values("path")
    a_points = points[[i for i, path in enumerate(paths) if path.startswith("a/")]]
    assert np.allclose(a_points, a_points[0], atol=1e-5)
    assert not np.allclose(points[paths.index("b/0.png")], a_points[0], atol=1e-5)


@needs_fiftyone
def test_rerun_adds_new_images_updates_changed_fields_and_duplicates_nothing(out: Path) -> None:
    export_to_fiftyone(out, "fo-rerun", map_method="pca")
    again = export_to_fiftyone(out, "fo-rerun", map_method="pca")
    assert (again.samples, again.added, again.changed, again.removed, again.map_method) == (11, 0, 0, 0, None)

    day2 = inbox_batch(out.parent / "inbox", {"a": (E[0], 2)}, first=4)  # a/4, a/5 join cluster 1
    cluster_embeddings_into(CONFIG, day2, out, 0.8, "model-a")
    grown = export_to_fiftyone(out, "fo-rerun", map_method="pca")
    assert (grown.samples, grown.added, grown.changed, grown.removed, grown.map_method) == (13, 2, 0, 0, "pca")
    rows = samples("fo-rerun")
    assert len({row["key"] for row in rows.values()}) == 13 and rows["a/5.png"]["cluster_id"] == 1

    name_cluster(out, 1, "ants")
    named = export_to_fiftyone(out, "fo-rerun")
    assert (named.samples, named.added, named.changed, named.map_method) == (13, 0, 6, None)
    rows = samples("fo-rerun")
    assert {rows[f"a/{i}.png"]["cluster_name"] for i in range(6)} == {"ants"}
    assert {rows[f"a/{i}.png"]["cluster_state"] for i in range(6)} == {"confirmed"}


def mark_in_app(out: Path, dataset_name: str, reject: str, relabel: tuple[str, str]) -> None:
    """Export, then mark as a person does in the App: tag one image `reject`, edit another's cluster label."""
    export_to_fiftyone(out, dataset_name, map_method="pca")
    fo, _ = import_fiftyone()
    dataset = fo.load_dataset(dataset_name)
    dataset.match(fo.ViewField("path") == reject).tag_samples(REJECT_TAG)
    sample = dataset.match(fo.ViewField("path") == relabel[0]).first()
    sample["cluster"].label = relabel[1]  # as the App's label editor leaves it
    sample.save()


@needs_fiftyone
def test_app_marks_become_corrections_once(out: Path) -> None:
    mark_in_app(out, "fo-marks", reject="a/3.png", relabel=("b/0.png", "1"))
    run = load_catalogue(out).run

    result = export_to_fiftyone(out, "fo-marks", apply=True)
    assert [c.run for c in result.corrections] == [run + 1, run + 2]
    images = read_table(out, "images").set_index("path")
    assert images.loc["a/3.png", "cluster_id"] == 0 and images.loc["b/0.png", "cluster_id"] == 1
    rejections = read_table(out, "rejections")
    rejected = images.loc["a/3.png", "key"]
    digest = int(read_table(out, "images").set_index("key").loc[rejected, "digest"])
    assert rejections.set_index("digest").loc[digest, "clusters"].tolist() == [1]
    assert person_events(out)[-3:] == [
        (run + 1, "rejected", 1, 0, 1),
        (run + 1, "confirmed", 1, 0, 0),
        (run + 2, "moved", 1, 2, 1),
    ]

    rows = samples("fo-marks")  # synced after the corrections: tag cleared, fields as the catalogue is now
    assert rows["a/3.png"]["tags"] == [] and (rows["a/3.png"]["cluster_id"], rows["a/3.png"]["label"]) == (0, None)
    assert (rows["b/0.png"]["cluster_id"], rows["b/0.png"]["label"], rows["b/0.png"]["cluster_state"]) == (
        1,
        "1",
        "confirmed",
    )
    assert result.changed == 5  # a/3, b/0, and a/0-a/2, whose cluster 1 became confirmed

    twice = export_to_fiftyone(out, "fo-marks", apply=True)
    assert twice.corrections == [] and (twice.changed, twice.added) == (0, 0) and load_catalogue(out).run == run + 2


@needs_fiftyone
def test_a_label_that_names_no_cluster_applies_nothing(out: Path) -> None:
    mark_in_app(out, "fo-bad", reject="a/3.png", relabel=("c/1.png", "9"))
    run = load_catalogue(out).run
    with pytest.raises(UserError, match=r"c/1.png@\w+: its cluster label '9' is not the id of a cluster"):
        export_to_fiftyone(out, "fo-bad", apply=True)
    assert load_catalogue(out).run == run and samples("fo-bad")["a/3.png"]["tags"] == [REJECT_TAG]


@needs_fiftyone
def test_cli_builds_the_dataset_and_refuses_marks_without_one(
    out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = replearn(
        monkeypatch, capsys, "clusters", "fiftyone", str(out), "--dataset", "fo-cli", "--map", "pca"
    )
    assert code == 0 and "FiftyOne dataset 'fo-cli': 11 images (11 added, 0 changed, 0 removed)" in output
    assert "map 'replearn_map' (pca) computed" in output
    code, output = replearn(
        monkeypatch, capsys, "clusters", "fiftyone", str(out), "--dataset", "fo-none", "--apply-tags"
    )
    assert code == 1 and "there is no FiftyOne dataset 'fo-none'" in output


def test_without_the_extra_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fiftyone", None)  # what `import fiftyone` meets where it is not installed
    with pytest.raises(UserError, match=r"pip install 'replearn\[fiftyone\]'"):
        import_fiftyone()
