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
from replearn.catalogue.indexes import INDEX_DIRS, index_path_of, search_image_index
from replearn.catalogue.search import SearchResult, search_catalogue, search_embeddings, search_images
from replearn.catalogue.segments import vectors_of
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


def assert_same_images(result: SearchResult, expected: SearchResult) -> None:
    """The same images for each query at the same similarities, however ties were broken."""
    found, wanted = (r.images.set_index(["query", "path"])["similarity"].sort_index() for r in (result, expected))
    assert found.index.tolist() == wanted.index.tolist()
    assert found.tolist() == pytest.approx(wanted.tolist(), abs=1e-6)


def search_without_image_indexes(out: Path, copy: Path, queries: np.ndarray, names: list[str], k: int) -> SearchResult:
    """Search a copy of OUT whose images segments have no index, as a catalogue written before they existed."""
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "catalogue" / INDEX_DIRS["images"])
    return search_embeddings(copy, queries, names, clusters=0, images=k)


def test_the_image_index_answers_as_an_exact_scan_and_an_old_catalogue_still_searches(
    out: Path, tmp_path: Path
) -> None:
    move_images(out, 2, ["a/0.png"])  # a second images segment, whose row of a/0 supersedes the first one's
    catalogue = load_catalogue(out)
    first, second = (index_path_of(catalogue.directory, s.file) for s in catalogue.images.segments)
    assert first.is_file() and second.is_file()  # each written with its segment
    # The first segment's index still holds a/0's old row among the four nearest of e0 ...
    vectors = vectors_of(catalogue.images.segment(0), "embedding", DIM)
    similarities, rows = search_image_index(first, E[None, 0].astype(np.float32), vectors, 4, 16)
    assert similarities[0].tolist() == pytest.approx([1.0] * 4)
    paths = catalogue.images.segment(0).column("path").take(rows[0]).to_pylist()
    assert sorted(paths) == [f"a/{i}.png" for i in range(4)]
    queries, names = np.array([QUERY, E[2], E[5]], dtype=np.float32), ["q", "c", "d"]
    indexed = search_embeddings(out, queries, names, clusters=0, images=11)
    # ... but a search gives each image once, with its newest row: all 11 for each query, as an exact scan does.
    assert indexed.images.groupby("query")["path"].nunique().tolist() == [11, 11, 11]
    assert indexed.images.set_index(["query", "path"]).loc[("q", "a/0.png"), "cluster_id"] == 2
    assert_same_images(indexed, search_without_image_indexes(out, tmp_path / "old", queries, names, 11))
    assert indexed.images[indexed.images["query"] == "d"].iloc[0]["path"] == "d/0.png"  # unclustered, filed too


def noisy(rng: np.random.Generator, centres: np.ndarray, noise: float) -> np.ndarray:
    points = centres + noise * rng.normal(size=centres.shape)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_compaction_writes_the_merged_segments_image_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    for day in range(4):  # four runs: their images segments merge into one
        centres = np.repeat(E[[2 * day, 2 * day + 1]], 3, axis=0)
        paths = [f"day{day}/{i}.png" for i in range(6)]
        cluster_embeddings_into(CONFIG, ImageBatch(paths, paths, paths, noisy(rng, centres, 0.05)), out, 0.8, "m")
    catalogue = load_catalogue(out)
    assert [s.level for s in catalogue.images.segments] == [1]
    states = [catalogue.manifest(), catalogue.undo["state"]] if catalogue.undo else [catalogue.manifest()]
    live = {index_path_of(catalogue.directory, s["file"]) for st in states for s in st["tables"]["images"]}
    written = set((catalogue.directory / INDEX_DIRS["images"]).iterdir())
    assert index_path_of(catalogue.directory, catalogue.images.segments[0].file) in written
    assert written == live  # the merged parts' indexes went with them, but for those of the undo point
    queries = noisy(rng, E[:8], 0.3)
    names = [f"q{i}" for i in range(8)]
    indexed = search_embeddings(out, queries, names, clusters=0, images=7)
    assert_same_images(indexed, search_without_image_indexes(out, tmp_path / "old", queries, names, 7))


def test_an_ivf_image_index_finds_every_image_and_most_exact_neighbours(tmp_path: Path) -> None:
    """2,100 clusters in one segment: the centroids' own index is an IVF; 50 unclustered images are filed by it."""
    import faiss

    dim, groups, singles = 32, 2_100, 50
    rng = np.random.default_rng(1)
    centres = noisy(rng, np.zeros((groups + singles, dim)), 1.0)
    points = np.concatenate([noisy(rng, np.repeat(centres[:groups], 2, axis=0), 0.02), centres[groups:]])
    paths = [f"{i:05d}.png" for i in range(len(points))]
    out = tmp_path / "out"
    config = ClusterConfig(min_size=2, method="components")
    cluster_embeddings_into(config, ImageBatch(paths, paths, paths, points), out, 0.9, "m")
    catalogue = load_catalogue(out)
    path = index_path_of(catalogue.directory, catalogue.images.segments[0].file)
    assert isinstance(faiss.downcast_index(faiss.read_index(str(path)).quantizer), faiss.IndexIVFFlat)

    chosen = np.concatenate([rng.choice(2 * groups, 250, replace=False), 2 * groups + np.arange(singles)])
    names = [paths[i] for i in chosen]
    indexed = search_embeddings(out, points[chosen], names, clusters=0, images=5)
    first = indexed.images[indexed.images["rank"] == 1]
    assert first["path"].tolist() == names and first["similarity"].tolist() == pytest.approx([1.0] * 300, abs=1e-5)
    exact = search_without_image_indexes(out, tmp_path / "old", points[chosen], names, 5)
    pairs = [set(zip(r.images["query"], r.images["path"], strict=True)) for r in (indexed, exact)]
    assert len(pairs[0] & pairs[1]) / len(pairs[1]) >= 0.9


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
