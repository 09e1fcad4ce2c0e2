"""The manifest: the facts recorded for every kind of file, the cache, parallel = serial, streaming."""

from __future__ import annotations

import builtins
import errno
import functools
import itertools
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from data_corpus import CONFIG, EXPECTED_ERRORS, EXPECTED_FACTS, HIDDEN, LONG_NAME, build_corpus, noise, snapshot
from replearn.data import manifest
from replearn.data.manifest import ScanEntry, build_manifest, describe_files
from replearn.errors import UserError

MAX_PIXELS = CONFIG.validate_.max_pixels


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).set_index("path")


def test_every_case_gets_its_facts_and_the_tree_is_untouched(corpus: Path, tmp_path: Path) -> None:
    before = snapshot(corpus.parent)
    stats = build_manifest(corpus, tmp_path / "manifest.parquet", MAX_PIXELS, workers=1)
    rows = read(tmp_path / "manifest.parquet")
    assert snapshot(corpus.parent) == before

    assert stats.ignored == HIDDEN
    assert not any(name.startswith(".") or "Thumbs" in name for name in rows.index)
    assert stats.class_folders == ["EPSILON", "alpha", "beta", "delta", "empty", "epsilon", "gamma"]
    for path, error in EXPECTED_ERRORS.items():
        assert rows.at[path, "error"].startswith(error), path
    for path, facts in EXPECTED_FACTS.items():
        assert rows.at[path, "decodable"], path
        assert {key: rows.at[path, key] for key in facts} == facts, path
    assert rows.loc["alpha/big.png", ["width", "height"]].tolist() == [200, 100]
    assert pd.isna(rows.at["alpha/big.png", "decodable"])  # measured from the header, never decoded
    assert not rows.loc[["gamma/loop.png", "gamma/outside.png", "gamma/back"], "readable"].any()
    assert not rows.at["beta/caf\\xe9.png", "name_is_utf8"] and rows.at["beta/caf\\xe9.png", "decodable"]
    assert rows.at[f"beta/{LONG_NAME}", "name_is_utf8"]
    assert pd.isna(rows.at["stray.png", "class"])
    assert rows.at["alpha/good_0.png", "sha256"] == rows.at["delta/copy.png", "sha256"]
    assert rows.at["gamma/inside.png", "sha256"] == rows.at["gamma/good_0.png", "sha256"]
    assert rows.index.tolist() == sorted(rows.index, key=lambda path: path.split("/"))  # walk order


def test_parallel_manifest_equals_serial(corpus: Path, tmp_path: Path) -> None:
    build_manifest(corpus, tmp_path / "serial.parquet", MAX_PIXELS, workers=1)
    build_manifest(corpus, tmp_path / "parallel.parquet", MAX_PIXELS, workers=2)
    pd.testing.assert_frame_equal(read(tmp_path / "serial.parquet"), read(tmp_path / "parallel.parquet"))


def test_rerun_reads_only_changed_files(tmp_path: Path) -> None:
    data, out = tmp_path / "raw", tmp_path / "out" / "manifest.parquet"
    for index in range(6):
        (data / f"c{index % 2}").mkdir(parents=True, exist_ok=True)
        noise(index).save(data / f"c{index % 2}" / f"{index}.png")
    (data / "c0" / "bad.jpg").write_text("not an image")

    first = build_manifest(data, out, MAX_PIXELS, workers=1)
    assert (first.files, first.described, first.cached) == (7, 7, 0)
    rows = read(out)
    again = build_manifest(data, out, MAX_PIXELS, workers=1)
    assert (again.described, again.cached) == (0, 7)
    pd.testing.assert_frame_equal(read(out), rows)

    noise(99).save(data / "c1" / "1.png")
    os.utime(data / "c1" / "1.png", ns=(1, 1))  # a different mtime even on coarse clocks
    (data / "c0" / "new.png").write_bytes((data / "c0" / "0.png").read_bytes())
    changed = build_manifest(data, out, MAX_PIXELS, workers=1)
    assert (changed.files, changed.described, changed.cached) == (8, 2, 6)
    assert read(out).at["c1/1.png", "sha256"] != rows.at["c1/1.png", "sha256"]

    other_guard = build_manifest(data, out, MAX_PIXELS + 1, workers=1)  # another bomb guard: cache invalid
    assert other_guard.cached == 0


def test_unreadable_file_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 does not stop root (the tests run as root in CI), so the OS refusal is simulated."""
    data = tmp_path / "raw" / "cls"
    data.mkdir(parents=True)
    noise(0).save(data / "secret.png")
    noise(1).save(data / "open.png")

    def refuse_secret(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).endswith("secret.png"):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(manifest, "open", refuse_secret, raising=False)
    build_manifest(tmp_path / "raw", tmp_path / "manifest.parquet", MAX_PIXELS, workers=1)
    rows = read(tmp_path / "manifest.parquet")
    assert rows.loc["cls/secret.png", ["readable", "error"]].tolist() == [False, "permission denied"]
    assert rows.at["cls/open.png", "decodable"]

    monkeypatch.undo()  # permissions fixed, mtime unchanged: the refused file is read again, not cached
    again = build_manifest(tmp_path / "raw", tmp_path / "manifest.parquet", MAX_PIXELS, workers=1)
    assert (again.described, again.cached) == (1, 1)
    assert read(tmp_path / "manifest.parquet").at["cls/secret.png", "decodable"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_by_permissions(tmp_path: Path) -> None:
    data = tmp_path / "raw" / "cls"
    data.mkdir(parents=True)
    noise(0).save(data / "secret.png")
    (data / "secret.png").chmod(0)
    try:
        build_manifest(tmp_path / "raw", tmp_path / "manifest.parquet", MAX_PIXELS, workers=1)
    finally:
        (data / "secret.png").chmod(0o644)
    assert read(tmp_path / "manifest.parquet").at["cls/secret.png", "error"] == "permission denied"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "is empty"),
        (lambda root: root.write_text("a file"), "is not a folder"),
        (lambda root: (root.mkdir(), (root / ".DS_Store").write_text("")), "is empty"),
    ],
    ids=["missing", "empty", "file", "only-hidden"],
)
def test_missing_or_empty_data_dir_is_a_user_error(tmp_path: Path, make: Any, message: str) -> None:
    make(tmp_path / "raw")
    with pytest.raises(UserError, match=message):
        build_manifest(tmp_path / "raw", tmp_path / "out" / "manifest.parquet", MAX_PIXELS, workers=1)
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_parallel_describe_is_streaming() -> None:
    """Only a bounded number of chunks is read ahead of the consumer, whatever the size of the tree."""
    consumed = itertools.count()

    def endless() -> Any:
        for index in itertools.count():
            next(consumed)
            yield [ScanEntry(f"cls/{index}.png", problem="symlink loop")]

    describe = functools.partial(describe_files, "/nonexistent", max_pixels=MAX_PIXELS)
    stream = manifest._describe_in_order(endless(), describe, workers=2)
    first = [next(stream) for _ in range(3)]
    assert [rows[0]["path"] for rows in first] == ["cls/0.png", "cls/1.png", "cls/2.png"]
    assert next(consumed) <= 4 * 2 + 4
    stream.close()
