"""Search: the nearest clusters and catalogue images of an image, on tiny catalogues built by real runs.

Embeddings are exact unit vectors, so similarities are arithmetic: cluster 1 = 4 x e0, 2 = 3 x e1,
3 = 3 x e2 (threshold 0.8); the query 0.9 e0 + 0.436 e1 is 0.9 from cluster 1 and 0.436 from cluster 2.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from console_script import replearn
from replearn import cli
from replearn.artifacts.hashing import sha256_file
from replearn.catalogue import search
from replearn.catalogue.corrections import merge_clusters, move_images, name_cluster
from replearn.catalogue.search import search_catalogue, search_embeddings, search_images
from replearn.catalogue.store import load_catalogue
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.config import ClusterConfig
from replearn.embedding.onnx import embed_folder
from replearn.errors import UserError
from replearn.export.onnx_export import ExportResult

DIM = 16
E = np.eye(DIM)
CONFIG = ClusterConfig(min_size=3, method="components")
QUERY = 0.9 * E[0] + np.sqrt(1 - 0.9**2) * E[1]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    groups = {"a": (E[0], 4), "b": (E[1], 3), "c": (E[2], 3), "d": (E[5], 1)}
    paths = [f"{group}/{i}.png" for group, (_, count) in groups.items() for i in range(count)]
    vectors = np.array([vector for vector, count in groups.values() for _ in range(count)], dtype=np.float32)
    cluster_embeddings_into(CONFIG, ImageBatch(paths, paths, paths, vectors), tmp_path, 0.8, "model-a")
    return tmp_path


def test_the_nearest_clusters_with_their_similarity_and_threshold(out: Path) -> None:
    name_cluster(out, 2, "bees")
    result = search_embeddings(out, QUERY[None, :], ["q"], clusters=3, images=0)
    assert result.threshold == pytest.approx(0.8) and result.images.empty
    found = result.clusters
    assert found["rank"].tolist() == [1, 2, 3] and found["cluster_id"].tolist() == [1, 2, 3]
    assert found["similarity"].tolist() == pytest.approx([0.9, np.sqrt(1 - 0.81), 0.0], abs=1e-6)
    assert found["passes"].tolist() == [True, False, False]
    assert found["name"].fillna("").tolist() == ["", "bees", ""]
    assert found["state"].tolist() == ["automatic", "confirmed", "automatic"]
    # More clusters asked for than exist: only those that do.
    assert len(search_embeddings(out, QUERY[None, :], ["q"], clusters=10, images=0).clusters) == 3


def test_the_nearest_images_each_once_with_their_cluster_now(out: Path) -> None:
    merge_clusters(out, [2, 3])  # c's images keep their stored id 3; search names the cluster they are in: 2
    move_images(out, 2, ["a/0.png"])  # a/0's row is rewritten in a newer segment: the old one must not count
    queries = np.array([QUERY, E[2]], dtype=np.float32)
    result = search_embeddings(out, queries, ["q", "c"], clusters=1, images=4)
    first = result.images[result.images["query"] == "q"]
    assert sorted(first["path"]) == ["a/0.png", "a/1.png", "a/2.png", "a/3.png"]
    assert first["similarity"].tolist() == pytest.approx([0.9] * 4, abs=1e-6)
    assert dict(zip(first["path"], first["cluster_id"], strict=True))["a/0.png"] == 2
    second = result.images[result.images["query"] == "c"]
    assert sorted(second["path"][:3]) == ["c/0.png", "c/1.png", "c/2.png"] and set(second["cluster_id"][:3]) == {2}
    assert second["similarity"].tolist() == pytest.approx([1, 1, 1, 0], abs=1e-6)
    assert result.clusters[["query", "cluster_id"]].values.tolist() == [["q", 1], ["c", 2]]  # 3 is merged into 2


def test_a_search_whose_segments_a_run_deleted_reads_the_new_manifest(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = load_catalogue(out)
    for name in ["w", "x", "y", "z", "v", "u"]:  # commits and compactions: the segments stale names are gone
        name_cluster(out, 1, name)
    with pytest.raises(FileNotFoundError):
        search_catalogue(stale, QUERY[None, :], ["q"], 1, 1, 16)
    loads = iter([stale])
    monkeypatch.setattr(search, "open_for_search", lambda path: next(loads, None) or load_catalogue(path))
    result = search_embeddings(out, QUERY[None, :], ["q"], clusters=1, images=1)
    assert result.clusters[["cluster_id", "name"]].values.tolist() == [[1, "u"]]


def test_errors_say_what_is_wrong(tmp_path: Path, out: Path) -> None:
    with pytest.raises(UserError, match="holds no cluster catalogue yet"):
        search_embeddings(tmp_path / "empty", QUERY[None, :], ["q"])
    with pytest.raises(UserError, match="16-dim embeddings, the queries are 8-dim"):
        search_embeddings(out, np.ones((1, 8), dtype=np.float32), ["q"])


@pytest.fixture
def model_catalogue(tiny_export: ExportResult, chars_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A catalogue of 12 real images embedded with the tiny ONNX model, and its inbox."""
    inbox = tmp_path / "inbox"
    for class_dir in sorted(chars_dir.iterdir())[:3]:
        for image in sorted(class_dir.iterdir())[:4]:
            (inbox / class_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, inbox / class_dir.name / image.name)
    embedded = embed_folder(tiny_export.path, inbox)
    batch = ImageBatch(
        embedded.paths,
        [sha256_file(inbox / path) for path in embedded.paths],
        [str(inbox / path) for path in embedded.paths],
        embedded.embeddings,
    )
    model_id = f"sha256:{sha256_file(tiny_export.path)}"
    cluster_embeddings_into(ClusterConfig(min_size=2, method="components"), batch, tmp_path / "out", 0.9, model_id)
    return tmp_path / "out", inbox


def test_search_through_the_model_finds_the_image_itself(
    tiny_export: ExportResult, model_catalogue: tuple[Path, Path]
) -> None:
    out, inbox = model_catalogue
    query = sorted(inbox.rglob("*.png"))[5]
    result = search_images(tiny_export.path, out, [query], clusters=2, images=3)
    top = result.images.iloc[0]
    assert top["path"] == query.relative_to(inbox).as_posix() and top["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert top["rank"] == 1 and result.images["query"].tolist() == [str(query)] * 3
    clusters = result.clusters
    assert clusters["rank"].tolist() == list(range(1, len(clusters) + 1)) and len(clusters) >= 1
    assert clusters["similarity"].is_monotonic_decreasing
    assert clusters["passes"].tolist() == (clusters["similarity"] >= 0.9).tolist()
    assert set(clusters["cluster_id"]) <= set(range(1, load_catalogue(out).next_cluster_id))


def test_cli_search_prints_tables_and_refuses_another_model(
    tiny_export: ExportResult,
    model_catalogue: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, inbox = model_catalogue
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "stdout", Console(width=250))  # one line a row, to read it back
    query = sorted(inbox.rglob("*.png"))[0].relative_to(tmp_path)
    code, text = replearn(monkeypatch, capsys, "search", str(tiny_export.path), "out", str(query), "--neighbours", "1")
    assert code == 0 and f"{query}: nearest clusters (threshold 0.9000)" in text
    assert f"{query}: nearest catalogue images" in text
    assert f"│ 1 │ {query.relative_to('inbox').as_posix()} │" in text and "1.0000" in text
    other = next(iter(tiny_export.variants.values()))[0]
    code, text = replearn(monkeypatch, capsys, "search", str(other), "out", str(query))
    assert code == 1 and "error: the catalogue in out was built with another model" in text
    code, text = replearn(monkeypatch, capsys, "search", str(tiny_export.path), "out", "missing.png")
    assert code == 1 and text == "error: image missing.png does not exist or is not a file"
    code, text = replearn(monkeypatch, capsys, "search", str(tiny_export.path), "nothing", str(query))
    assert code == 1 and "error: nothing holds no cluster catalogue yet" in text
