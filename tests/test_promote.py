"""Promotion of confirmed clusters to class folders, on a tiny catalogue built by a real run over real files.

The inbox holds tiny PNGs of distinct colours: cluster 1 = a/0..3 (e0), 2 = b/0..2 (e1), 3 = c/0..2
(e2), d/0 unclustered. DATA_DIR holds a class `bees` whose existing.png has b/0.png's content, and a
class `other`: what is copied, skipped and recorded is counted by hand.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

from console_script import replearn
from replearn.catalogue.corrections import confirm_clusters, merge_clusters, name_cluster, undo_last
from replearn.catalogue.lineage import cluster_history
from replearn.catalogue.promotion import PROVENANCE_FILE, promote_clusters
from replearn.catalogue.read import read_table
from replearn.catalogue.store import load_catalogue
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.config import ClusterConfig, SplitConfig
from replearn.data.manifest import build_manifest
from replearn.errors import UserError

DIM = 8
E = np.eye(DIM)
GROUPS = {"a": (E[0], 4), "b": (E[1], 3), "c": (E[2], 3), "d": (E[5], 1)}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `folder`: its bytes and mtime, to prove that nothing the user had changed."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    root = tmp_path / "inbox"
    for shade, (group, (_, count)) in enumerate(GROUPS.items()):
        (root / group).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (4, 4), (40 * shade, 20 * i, 7)).save(root / group / f"{i}.png")
    return root


@pytest.fixture
def out(tmp_path: Path, inbox: Path) -> Path:
    paths = [f"{group}/{i}.png" for group, (_, count) in GROUPS.items() for i in range(count)]
    batch = ImageBatch(
        paths=paths,
        sha256=[sha(inbox / path) for path in paths],
        sources=[str(inbox / path) for path in paths],
        embeddings=np.array([vector for vector, count in GROUPS.values() for _ in range(count)], dtype=np.float32),
    )
    cluster_embeddings_into(ClusterConfig(min_size=3, method="components"), batch, tmp_path / "out", 0.8, "model-a")
    return tmp_path / "out"


@pytest.fixture
def data(tmp_path: Path, inbox: Path) -> Path:
    root = tmp_path / "data"
    (root / "bees").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "bees" / "existing.png").write_bytes((inbox / "b" / "0.png").read_bytes())
    Image.new("RGB", (4, 4), (1, 2, 3)).save(root / "other" / "x.png")
    return root


def provenance(class_dir: Path) -> list[dict[str, str]]:
    with (class_dir / PROVENANCE_FILE).open() as handle:
        return list(csv.DictReader(handle))


def test_named_clusters_become_classes_with_provenance(out: Path, data: Path, inbox: Path) -> None:
    before = snapshot(data)
    name_cluster(out, 1, "ants")
    name_cluster(out, 2, "bees")
    result = promote_clusters(out, data)
    assert result.run == 4  # run 1, two names, then the promotion
    assert [(c.cluster_id, c.name, c.copied, c.in_data, c.promoted_before, c.missing) for c in result.clusters] == [
        (1, "ants", 4, 0, 0, 0),
        (2, "bees", 2, 1, 0, 0),  # b/0.png is bees/existing.png already: not copied again
    ]
    assert sorted(p.name for p in (data / "ants").iterdir()) == [PROVENANCE_FILE, "0.png", "1.png", "2.png", "3.png"]
    assert sorted(p.name for p in (data / "bees").iterdir()) == [PROVENANCE_FILE, "1.png", "2.png", "existing.png"]
    assert (data / "ants" / "2.png").read_bytes() == (inbox / "a" / "2.png").read_bytes()
    now = snapshot(data)
    assert all(now[path] == facts for path, facts in before.items())  # the user's files are as they were
    rows = provenance(data / "bees")
    assert [(r["file"], r["key"], r["cluster_id"], r["model_id"], r["run"]) for r in rows] == [
        ("1.png", f"b/1.png@{sha(inbox / 'b/1.png')}", "2", "model-a", "4"),
        ("2.png", f"b/2.png@{sha(inbox / 'b/2.png')}", "2", "model-a", "4"),
    ]
    assert rows[0]["source"] == str(inbox / "b" / "1.png") and rows[0]["sha256"] == sha(inbox / "b" / "1.png")
    assert rows[0]["catalogue"] == str((out / "catalogue").resolve())
    promotions = read_table(out, "promotions").sort_values("file", na_position="first")
    assert len(promotions) == 7 and promotions["file"].isna().sum() == 1  # the one found in the data: marked, no file
    assert set(promotions["class"]) == {"ants", "bees"} and set(promotions["run"]) == {4}
    events = read_table(out, "events")
    promoted = events[events["kind"] == "promoted"]
    assert promoted[["run", "actor", "cluster_id", "images", "name"]].values.tolist() == [
        [4, "person", 1, 4, "ants"],
        [4, "person", 2, 2, "bees"],
    ]
    assert cluster_history(out, 2)["what"].tolist()[-1] == "cluster 2 promoted to class 'bees', 2 images copied"


def test_a_second_promotion_copies_nothing_and_commits_nothing(out: Path, data: Path) -> None:
    name_cluster(out, 1, "ants")
    promote_clusters(out, data)
    files, manifest = snapshot(data), (out / "catalogue" / "manifest.json").read_bytes()
    again = promote_clusters(out, data)
    assert again.run is None and [(c.copied, c.promoted_before) for c in again.clusters] == [(0, 4)]
    assert snapshot(data) == files and (out / "catalogue" / "manifest.json").read_bytes() == manifest


def test_merged_clusters_promote_together_and_names_never_clash(out: Path, data: Path, inbox: Path) -> None:
    merge_clusters(out, [1, 3])  # c/0..2 are in cluster 1 now; c/0.png and a/0.png share a file name
    name_cluster(out, 1, "ants")
    result = promote_clusters(out, data)
    assert [(c.cluster_id, c.copied) for c in result.clusters] == [(1, 7)]
    names = sorted(p.name for p in (data / "ants").iterdir() if p.name != PROVENANCE_FILE)
    c0 = f"0-{sha(inbox / 'c' / '0.png')[:12]}.png"
    assert names == sorted(
        [
            "0.png",
            "1.png",
            "2.png",
            "3.png",
            c0,
            f"1-{sha(inbox / 'c/1.png')[:12]}.png",
            f"2-{sha(inbox / 'c/2.png')[:12]}.png",
        ]
    )
    assert (data / "ants" / c0).read_bytes() == (inbox / "c" / "0.png").read_bytes()


def test_an_unnamed_or_badly_named_cluster_is_refused_before_anything_is_written(out: Path, data: Path) -> None:
    name_cluster(out, 1, "ants")
    confirm_clusters(out, [3])
    files, run = snapshot(data), load_catalogue(out).run
    with pytest.raises(UserError, match=r"confirmed cluster\(s\) 3 have no name.*replearn clusters name"):
        promote_clusters(out, data)
    with pytest.raises(UserError, match="cluster 2 is automatic"):
        promote_clusters(out, data, [2])
    for name, why in [(".ants", "validation skips hidden"), ("a/b", "path separator"), ("Thumbs.db", "system")]:
        name_cluster(out, 3, name)
        with pytest.raises(UserError, match=f"cluster 3's name .* cannot be a class folder \\(.*{why}"):
            promote_clusters(out, data)
        run += 1
    assert snapshot(data) == files and load_catalogue(out).run == run  # the names only
    assert promote_clusters(out, data, [1]).run is not None  # only the named one
    with pytest.raises(UserError, match="is not a folder"):
        promote_clusters(out, data / "missing")


def test_a_missing_file_is_skipped_counted_and_promoted_later(
    out: Path, data: Path, inbox: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name_cluster(out, 1, "ants")
    kept = (inbox / "a" / "1.png").read_bytes()
    (inbox / "a" / "1.png").unlink()
    (inbox / "a" / "2.png").write_bytes(b"changed since it was clustered")
    with caplog.at_level(logging.WARNING):
        result = promote_clusters(out, data)
    assert [(c.copied, c.missing) for c in result.clusters] == [(2, 2)]
    assert "a/1.png" in caplog.text and "content changed since it was clustered" in caplog.text
    (inbox / "a" / "1.png").write_bytes(kept)
    again = promote_clusters(out, data)
    assert [(c.copied, c.promoted_before, c.missing) for c in again.clusters] == [(1, 2, 1)]
    assert len(provenance(data / "ants")) == 3  # one header, rows appended


def test_validation_does_not_take_the_provenance_file_for_an_image(out: Path, data: Path, tmp_path: Path) -> None:
    name_cluster(out, 1, "ants")
    promote_clusters(out, data)
    stats = build_manifest(data, tmp_path / "manifest.parquet", max_pixels=10**6, workers=1)
    paths = pd.read_parquet(tmp_path / "manifest.parquet")["path"].tolist()
    assert stats.files == 6 and stats.ignored == 1 and not any(PROVENANCE_FILE in path for path in paths)


def test_undo_leaves_the_promoted_files_and_marks(out: Path, data: Path) -> None:
    name_cluster(out, 1, "ants")
    promote_clusters(out, data)
    undo_last(out)
    assert len(list((data / "ants").glob("*.png"))) == 4 and len(read_table(out, "promotions")) == 4
    assert promote_clusters(out, data).run is None


def test_cli_promotes_and_refuses_with_one_line(
    out: Path, data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(out.parent)
    name_cluster(out, 2, "bees")
    confirm_clusters(out, [3])
    code, text = replearn(monkeypatch, capsys, "clusters", "promote", "out", "data")
    assert code == 1 and text.startswith("error: confirmed cluster(s) 3 have no name")
    assert "`replearn clusters name out ID NAME`" in text
    code, text = replearn(monkeypatch, capsys, "clusters", "promote", "out", "data", "2")
    assert code == 0 and "promotion 4 into data" in text and "bees" in text and ".replearn-provenance.csv" in text
    code, text = replearn(monkeypatch, capsys, "clusters", "promote", "out", "nowhere", "2")
    assert code == 1 and "error: DATA_DIR nowhere is not a folder" in text


def test_promotion_names_the_classes_that_the_split_will_hold_out_of_training(out: Path, data: Path) -> None:
    name_cluster(out, 1, "ants")
    name_cluster(out, 2, "bees")
    result = promote_clusters(out, data, split=SplitConfig(unseen_classes=["ants", "other"]))
    assert result.unseen == ["ants"]
    console = Console(width=400, record=True)
    console.print(result)
    assert "ants: the split holds these classes out of training as unseen" in console.export_text()
    name_cluster(out, 3, "cats")
    assert promote_clusters(out, data, split=SplitConfig(unseen_fraction=0.0)).unseen == []
