"""report.html: written every run, opens without a server, links only to files that exist; evaluation metrics."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from replearn.clustering.cluster import ImageBatch, cluster_embeddings_into, sha256_file
from replearn.config import ClusterConfig

CLASSES = ["digit_1", "upper_A", "lower_q"]


class LinkCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links.extend(value for name, value in attrs if name in ("href", "src") and value)


def links_of(report: Path) -> list[str]:
    collector = LinkCollector()
    collector.feed(report.read_text(encoding="utf-8"))
    return collector.links


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


def test_report_links_only_to_files_that_exist(inbox: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cluster_embeddings_into(ClusterConfig(min_size=3), labelled_batch(inbox, odd_ones=2), out, 0.8, "m")
    assert result.run_dir is not None
    report = result.run_dir / "report.html"
    assert report.is_file()
    links = links_of(report)
    assert "thumbs/unclustered.jpg" in links
    assert sum(link.startswith("thumbs/cluster-") for link in links) == 3
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), link
        assert (result.run_dir / link).is_file(), link
    html = report.read_text()
    assert "Cluster sizes" in html and "Unclustered this run (2)" in html


def test_report_skips_images_that_have_gone(inbox: Path, tmp_path: Path) -> None:
    """A later run's report is built while earlier inbox files may have been moved away."""
    out = tmp_path / "out"
    batch = labelled_batch(inbox)
    shutil.rmtree(inbox / CLASSES[0])
    result = cluster_embeddings_into(ClusterConfig(min_size=3), batch, out, 0.8, "m")
    assert result.run_dir is not None
    links = links_of(result.run_dir / "report.html")
    assert sum(link.startswith("thumbs/cluster-") for link in links) == 2
    assert all((result.run_dir / link).is_file() for link in links)


def test_evaluation_against_class_folders(inbox: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cluster_embeddings_into(ClusterConfig(min_size=3), labelled_batch(inbox, odd_ones=2), out, 0.8, "m", True)
    assert result.run_dir is not None
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["pairwise_precision"] == 1.0 and metrics["bcubed_precision"] == 1.0
    assert metrics["unclustered_fraction"] == pytest.approx(2 / 24)
    assert metrics["pairwise_recall"] < 1.0 and metrics["clusters"] == 3
    assert 'href="metrics.json"' in (result.run_dir / "report.html").read_text()
