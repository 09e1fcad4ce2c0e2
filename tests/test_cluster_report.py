"""report.html: written every run, one self-contained page whose pictures decode; evaluation metrics."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from replearn.artifacts.hashing import sha256_file
from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into
from replearn.config import ClusterConfig
from replearn.html_images import PageImages, jpeg_data_uri

CLASSES = ["digit_1", "upper_A", "lower_q"]


class LinkCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links.extend(value for name, value in attrs if name in ("href", "src") and value)


def pictures_of(report: Path) -> dict[str, Image.Image]:
    """Every link of the page, which must be a picture inside it, decoded; by alt text.

    Decoded here by hand (not with replearn.html_images), so the test does not trust the code it checks.
    """
    page = report.read_text(encoding="utf-8")
    assert "url(" not in page and "<link" not in page and "<script" not in page and "srcset" not in page
    collector = ImageCollector()
    collector.feed(page)
    assert len(collector.links) == len(collector.images), "every link is an <img> source"
    decoded = {}
    for alt, source in collector.images:
        match = re.fullmatch(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", source)
        assert match, f"{alt} points outside the page: {source[:80]}"
        image = Image.open(io.BytesIO(base64.b64decode(match.group(1), validate=True)))
        image.load()  # raises if the data is not a whole picture
        decoded[alt] = image
    return decoded


class ImageCollector(LinkCollector):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        super().handle_starttag(tag, attrs)
        if tag == "img":
            values = dict(attrs)
            self.images.append((values.get("alt") or "", values.get("src") or ""))


@pytest.fixture()
def inbox(chars_dir: Path, tmp_path: Path) -> Path:
    """Three classes of the chars demo in class folders, plus one loose image per class folder's odd one out."""
    root = tmp_path / "inbox"
    for name in CLASSES:
        shutil.copytree(chars_dir / name, root / name)
    return root


def labelled_batch(inbox: Path, odd_ones: int = 0) -> ImageBatch:
    """Hand-made embeddings: one direction per class folder, so the right clustering is known.

    The first `odd_ones` images of the last class get directions of their own (they end up unclustered).
    """
    paths = sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*.png"))
    rng = np.random.default_rng(0)
    dim = 16
    vectors = []
    odd = 0
    for path in paths:
        centre = np.eye(dim)[CLASSES.index(path.split("/")[0])]
        if path.startswith(CLASSES[-1]) and odd < odd_ones:
            centre, odd = np.eye(dim)[8 + odd], odd + 1
        vectors.append(centre + 0.05 * rng.normal(size=dim))
    embeddings = np.array(vectors, dtype=np.float32)
    return ImageBatch(
        paths=paths,
        sha256=[sha256_file(inbox / p) for p in paths],
        sources=[str(inbox / p) for p in paths],
        embeddings=embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True),
    )


def test_report_is_one_page_whose_pictures_decode(inbox: Path, tmp_path: Path) -> None:
    """The dashboard shows the page alone: it references no file, and each montage is inside it and decodes."""
    out = tmp_path / "out"
    config = ClusterConfig(min_size=3, report_samples=4, thumbnail_size=32)
    result = cluster_embeddings_into(config, labelled_batch(inbox, odd_ones=2), out, 0.8, "m")
    assert result.run_dir is not None
    report = result.run_dir / "report.html"
    pictures = pictures_of(report)
    montages = [f"{kind} members of cluster {i}" for i in (1, 2, 3) for kind in ("typical", "atypical")]
    assert sorted(pictures) == sorted(["unclustered images", *montages])
    assert pictures["unclustered images"].size == (2 * 32, 32)  # the two odd ones, one row
    assert pictures["typical members of cluster 1"].size == (2 * 32, 32)  # report_samples // 2 each side
    assert [path.name for path in result.run_dir.iterdir() if path.is_dir()] == []  # no thumbs/ beside it
    html = report.read_text()
    assert "Sizes of the clusters this run created, grew or merged" in html and "Unclustered this run (2)" in html
    assert "montages of 3 of them (at most cluster.report_clusters = 100, within 8 MB" in html


def test_report_states_its_cap_on_clusters(inbox: Path, tmp_path: Path) -> None:
    config = ClusterConfig(min_size=3, report_clusters=1)
    result = cluster_embeddings_into(config, labelled_batch(inbox), tmp_path / "out", 0.8, "m")
    assert result.run_dir is not None
    html = (result.run_dir / "report.html").read_text()
    assert "montages of 1 of them (at most cluster.report_clusters = 1," in html and "2 more in clusters.json" in html
    assert len(pictures_of(result.run_dir / "report.html")) == 2  # one cluster: its typical and atypical members


def test_pictures_beyond_the_page_budget_are_left_out_and_counted() -> None:
    quiet = Image.new("RGB", (64, 64), "white")
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    small, large = len(jpeg_data_uri(quiet)), len(jpeg_data_uri(noisy))
    assert large > 2 * small
    pictures = PageImages(max_bytes=small + large - 1)
    assert pictures.tag(quiet, "a") is not None
    assert pictures.tag(noisy, "b") is None  # one byte short of fitting beside the first
    assert pictures.tag(quiet, "c") is not None  # a small one still fits
    assert pictures.left_out == 1 and pictures.spent == 2 * small


def test_report_skips_images_that_have_gone(inbox: Path, tmp_path: Path) -> None:
    """A later run's report is built while earlier inbox files may have been moved away."""
    out = tmp_path / "out"
    batch = labelled_batch(inbox)
    shutil.rmtree(inbox / CLASSES[0])
    result = cluster_embeddings_into(ClusterConfig(min_size=3), batch, out, 0.8, "m")
    assert result.run_dir is not None
    pictures = pictures_of(result.run_dir / "report.html")
    assert sum(alt.startswith("typical members") for alt in pictures) == 2


def test_least_cohesive_cluster_comes_first_and_is_flagged(tmp_path: Path) -> None:
    """A chain (angles 0-80 degrees, 20 apart: neighbours at cos 20 = 0.94) and a tight blob near 180 degrees.

    At threshold 0.93 the chain is one cluster whose prototype sits at 40 degrees; its cohesion is
    (2 cos 40 + 2 cos 20 + 1) / 5 = 0.88, below the threshold, so it is flagged and listed first.
    """
    angles = np.radians([0, 20, 40, 60, 80, 179, 180, 181, 180.5])
    embeddings = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    paths = [f"c/{i}.png" for i in range(len(angles))]
    batch = ImageBatch(paths=paths, sha256=paths, sources=paths, embeddings=embeddings)
    result = cluster_embeddings_into(ClusterConfig(min_size=3), batch, tmp_path, 0.93, "m")
    assert result.run_dir is not None
    titles = [part.split("</h3>")[0] for part in (result.run_dir / "report.html").read_text().split("<h3>")[1:]]
    chain = (2 * np.cos(np.radians(40)) + 2 * np.cos(np.radians(20)) + 1) / 5
    assert len(titles) == 2
    assert titles[0].startswith("Cluster 1 (new): 5 images") and f"cohesion {chain:.3f} LOW COHESION" in titles[0]
    assert titles[1].startswith("Cluster 2 (new): 4 images") and "LOW COHESION" not in titles[1]


def test_evaluation_against_class_folders(inbox: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cluster_embeddings_into(ClusterConfig(min_size=3), labelled_batch(inbox, odd_ones=2), out, 0.8, "m", True)
    assert result.run_dir is not None
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["pairwise_precision"] == 1.0 and metrics["bcubed_precision"] == 1.0
    assert metrics["unclustered_fraction"] == pytest.approx(2 / 24)
    assert metrics["pairwise_recall"] < 1.0 and metrics["clusters"] == 3
    page = (result.run_dir / "report.html").read_text()
    assert "in the run folder:</span> assignments.csv · clusters.json · metrics.json" in page
    assert "<td>clusters</td><td>3</td>" in page and "<td>classes</td><td>3</td>" in page


def write_projection_model(
    path: Path, size: int = 32, dim: int = 16, threshold: float | None = 0.5, seed: int = 0
) -> None:
    """A tiny stand-in for an exported model (test fixture only): centred pixels, random projection, L2 norm.

    `seed` draws the projection: two seeds are two models whose embeddings are not comparable.

    Built with onnx.helper so the end-to-end test needs no torch; it carries replearn's metadata.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from replearn.artifacts.metadata import ModelMetadata

    weights = np.random.default_rng(seed).normal(size=(3 * size * size, dim)).astype(np.float32)
    nodes = [
        helper.make_node("Sub", ["images", "half"], ["centred"]),
        helper.make_node("Flatten", ["centred"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weights"], ["projected"]),
        helper.make_node("ReduceL2", ["projected"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["projected", "norm"], ["embeddings"]),
    ]
    graph = helper.make_graph(
        nodes,
        "projection",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", dim])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    metadata = ModelMetadata(
        input_size=size,
        channel_order="RGB",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        embedding_dim=dim,
        threshold=threshold,
        classes=(),
        replearn_version="test",
        config_hash="test",
        data_version="test",
        resize_mode="pad",
    )
    model.ir_version = 10  # what this onnxruntime reads
    helper.set_model_props(model, metadata.to_props())
    onnx.save(model, path)


def test_cluster_command_end_to_end(inbox: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from replearn.cli import app

    runner = CliRunner()
    model, out = tmp_path / "model.onnx", tmp_path / "out"
    write_projection_model(model)
    (inbox / "not-an-image.png").write_text("garbage")

    first = runner.invoke(app, ["cluster", str(model), str(inbox), str(out), "--min-size", "2", "--evaluate"])
    assert first.exit_code == 1 and "class folder" in str(first.exception)  # the loose file is in no class folder
    assert not (out / "catalogue").exists()
    (inbox / "not-an-image.png").rename(inbox / CLASSES[0] / "not-an-image.png")

    first = runner.invoke(app, ["cluster", str(model), str(inbox), str(out), "--min-size", "2", "--evaluate"])
    assert first.exit_code == 0, first.output
    assert "pairwise_f1" in first.output
    run_dir = out / "runs" / "run-000001"
    assert pictures_of(run_dir / "report.html")
    failures = (run_dir / "failures.csv").read_text().splitlines()
    assert len(failures) == 2 and failures[1].startswith("digit_1/not-an-image.png,")
    assert str(inbox) in failures[1]  # the error names the inbox file, not a temporary link
    exported = runner.invoke(app, ["clusters", "export", str(out), str(tmp_path / "before.csv")])
    assert exported.exit_code == 0 and "24 images written" in exported.output
    before = pd.read_csv(tmp_path / "before.csv").set_index("path")
    assert len(before) == 24 and list(before.columns) == ["cluster_id", "similarity", "run", "changed_run"]

    again = runner.invoke(app, ["cluster", str(model), str(inbox), str(out)])
    assert again.exit_code == 0 and "nothing new" in again.output
    assert not (out / "runs" / "run-000002").exists()

    shutil.copy(inbox / CLASSES[1] / sorted(p.name for p in (inbox / CLASSES[1]).iterdir())[0], inbox / "new.png")
    grown = runner.invoke(app, ["cluster", str(model), str(inbox), str(out), "--min-size", "2"])
    assert grown.exit_code == 0, grown.output
    runner.invoke(app, ["clusters", "export", str(out), str(tmp_path / "after.csv")])
    after = pd.read_csv(tmp_path / "after.csv").set_index("path")
    kept = before[before["cluster_id"] > 0].index
    assert after.loc[kept, "cluster_id"].tolist() == before.loc[kept, "cluster_id"].tolist()  # ids are kept
    # new.png, and the earlier unclustered image it duplicates, which now forms a cluster with it
    assert after.loc["new.png", "changed_run"] == 2 and after.loc["new.png", "cluster_id"] > 0

    empty = tmp_path / "empty"
    empty.mkdir()
    idle = runner.invoke(app, ["cluster", str(tmp_path / "no-model.onnx"), str(empty), str(out)])
    assert idle.exit_code == 0 and "nothing new" in idle.output


def test_scheduled_runs_read_only_new_files_and_survive_unreadable_ones(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from replearn.clustering import inbox as inbox_hashing
    from replearn.clustering.cluster import cluster_images
    from replearn.config import build_config

    model, out = tmp_path / "model.onnx", tmp_path / "out"
    write_projection_model(model)
    (inbox / CLASSES[0] / "gone.png").symlink_to(tmp_path / "deleted.png")  # a broken link: unreadable
    config = build_config({"cluster": {"min_size": 2}, "embed": {"provider": "cpu"}})
    first = cluster_images(config, model, inbox, out)
    assert first.new_images == 24
    assert [path for path, _ in first.failures] == [f"{CLASSES[0]}/gone.png"]
    assert "FileNotFoundError" in first.failures[0][1]

    read: list[Path] = []
    real_sha256 = inbox_hashing.sha256_file
    monkeypatch.setattr(inbox_hashing, "sha256_file", lambda path: read.append(path) or real_sha256(path))
    shutil.copy(next((inbox / CLASSES[1]).iterdir()), inbox / CLASSES[1] / "new.png")
    second = cluster_images(config, model, inbox, out)
    assert read == [inbox / CLASSES[1] / "new.png"]  # the 24 known files were not read again
    assert second.new_images == 1

    (out / inbox_hashing.HASH_CACHE_NAME).write_bytes(b"damaged")  # the cache only saves reading
    read.clear()
    assert cluster_images(config, model, inbox, out).run is None
    assert len(read) == 25


def test_a_file_name_that_is_not_utf8_is_listed_and_the_runs_go_on(inbox: Path, tmp_path: Path) -> None:
    """Validation reports such a name cleanly; the hash cache (parquet) could not store it, and every run died."""
    import os

    from replearn.clustering.cluster import cluster_images
    from replearn.config import build_config

    model, out = tmp_path / "model.onnx", tmp_path / "out"
    write_projection_model(model)
    image = next((inbox / CLASSES[0]).iterdir())
    os.link(image, os.fsencode(inbox / CLASSES[0]) + b"/bad_name_\xff\xfe.png")
    config = build_config({"cluster": {"min_size": 2}, "embed": {"provider": "cpu"}})
    listed = [(f"{CLASSES[0]}/bad_name_\\xff\\xfe.png", "the file name is not valid UTF-8; rename the file")]
    first = cluster_images(config, model, inbox, out)
    assert first.new_images == 24 and first.failures == listed
    second = cluster_images(config, model, inbox, out)  # the next scheduled run: nothing new, no crash
    assert second.run is None and second.failures == listed
    failures = (out / "runs" / "run-000001" / "failures.csv").read_text(encoding="utf-8")
    assert "bad_name_\\xff\\xfe.png,the file name is not valid UTF-8" in failures


def test_an_undecodable_inbox_file_is_listed_with_its_inbox_path(inbox: Path, tmp_path: Path) -> None:
    """New images are embedded where they are (no staging copy), so failures name the inbox's own files."""
    from replearn.clustering.cluster import cluster_images
    from replearn.config import build_config

    model, out = tmp_path / "model.onnx", tmp_path / "out"
    write_projection_model(model)
    (inbox / CLASSES[0] / "text.png").write_text("not an image")
    run = cluster_images(build_config({"cluster": {"min_size": 2}, "embed": {"provider": "cpu"}}), model, inbox, out)
    assert run.new_images == 24
    assert [path for path, _ in run.failures] == [f"{CLASSES[0]}/text.png"]
    assert run.run_dir is not None
    listed = (run.run_dir / "failures.csv").read_text().splitlines()
    assert listed[0] == "path,error" and listed[1].startswith(f"{CLASSES[0]}/text.png,")
    assert "replearn-cluster-" not in listed[1]  # no temporary folder's name in the message
