"""The preprocess stage: the output contract, incremental reruns, bad files, and the fast loader."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from replearn.cli import app
from replearn.config import Config, build_config
from replearn.data import preprocess as preprocess_module
from replearn.data.preprocess import preprocess
from replearn.data.splits import COLUMNS, read_splits
from replearn.errors import UserError
from replearn.training.data import PreprocessedImages


def small_config(**preprocess: object) -> Config:
    return build_config({"preprocess": {"resize": {"size": 32}, "workers": 2, **preprocess}})


@pytest.fixture(scope="module")
def preprocessed(chars_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("preprocess") / "out"
    preprocess(small_config(), chars_dir, out)
    return out


@pytest.fixture
def few_classes(chars_dir: Path, tmp_path: Path) -> Path:
    """Three classes of the chars data (8 images each), in a folder the test may change."""
    raw = tmp_path / "raw"
    for name in ("digit_1", "upper_A", "lower_b"):
        shutil.copytree(chars_dir / name, raw / name)
    return raw


def outputs(out: Path) -> dict[str, int]:
    """Every file under OUT/images with its inode: a rewritten file gets a new one."""
    return {p.relative_to(out).as_posix(): p.stat().st_ino for p in sorted((out / "images").rglob("*")) if p.is_file()}


def test_output_follows_the_contract(preprocessed: Path, chars_dir: Path) -> None:
    table = read_splits(preprocessed)
    assert list(table.columns) == COLUMNS
    assert len(table) == 62 * 8
    assert set(table["split"]) == {"train", "val", "test"} and set(table["subset"]) == {"seen", "unseen"}
    for row in table.sample(20, random_state=0).itertuples():
        with Image.open(preprocessed / row.path) as image:
            assert (image.mode, image.size, image.format) == ("RGB", (32, 32), "PNG")
        assert (chars_dir / row.source).is_file()
        assert row.path == f"images/{row.label}/{row.sha256[:16]}_{Path(row.path).stem.split('_')[1]}.png"
        assert row.group == row.source.split("/")[1].split("_")[0]
    assert set(outputs(preprocessed)) == set(table["path"])


def test_the_summary_is_read_back_for_resize_and_data_version(preprocessed: Path, tmp_path: Path) -> None:
    """Training and export read the resize and the data version back; the version is splits.csv's hash."""
    summary = preprocess_module.read_summary(preprocessed)
    assert summary is not None and summary.resize.size == 32 and summary.wide is False
    assert summary.data_version == hashlib.sha256((preprocessed / "splits.csv").read_bytes()).hexdigest()[:16]
    assert preprocess_module.read_summary(tmp_path) is None  # a folder preprocessing never wrote
    (tmp_path / "preprocess.json").write_text("{}")
    with pytest.raises(UserError, match="rerun `replearn preprocess`"):
        preprocess_module.read_summary(tmp_path)


def test_every_class_has_every_split_and_groups_stay_together(preprocessed: Path) -> None:
    table = read_splits(preprocessed)
    assert (table.groupby("label")["split"].nunique() == 3).all()
    assert (table.groupby(["label", "group"])["split"].nunique() == 1).all()
    assert (table.groupby("label")["subset"].nunique() == 1).all()


def test_summary_counts_match_the_table(preprocessed: Path) -> None:
    summary = json.loads((preprocessed / "preprocess.json").read_text())
    table = read_splits(preprocessed)
    assert summary["resize"] == {"size": 32, "mode": "pad"}
    assert summary["images"] == len(table)
    for subset, counts in summary["counts"].items():
        for split, count in counts.items():
            assert count == ((table["subset"] == subset) & (table["split"] == split)).sum()
    assert sorted(summary["classes"]["seen"] + summary["classes"]["unseen"]) == sorted(set(table["label"]))
    assert summary["failures"] == [] and summary["duplicates"] == []


def test_rerun_without_changes_redoes_nothing(few_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = preprocess(small_config(), few_classes, out)
    assert (first.written, first.skipped, first.removed) == (24, 0, 0)
    before, table = outputs(out), (out / "splits.csv").read_bytes()
    again = preprocess(small_config(), few_classes, out)
    assert (again.written, again.skipped, again.removed) == (0, 24, 0)
    assert outputs(out) == before
    assert (out / "splits.csv").read_bytes() == table


def test_changed_settings_redo_everything(few_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    preprocess(small_config(), few_classes, out)
    before = set(outputs(out))
    result = preprocess(small_config(resize={"size": 16}), few_classes, out)
    assert (result.written, result.skipped, result.removed) == (24, 0, 24)
    assert not before & set(outputs(out))
    with Image.open(out / read_splits(out)["path"][0]) as image:
        assert image.size == (16, 16)


def test_deleted_and_changed_sources_update_their_outputs(few_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    preprocess(small_config(), few_classes, out)
    table = read_splits(out).set_index("source")
    deleted, changed = sorted(table.index)[:2]
    (few_classes / deleted).unlink()
    Image.new("L", (32, 32), 0).save(few_classes / changed)
    result = preprocess(small_config(), few_classes, out)
    assert (result.written, result.skipped, result.removed) == (1, 22, 2)
    after = read_splits(out).set_index("source")
    assert deleted not in after.index
    assert after.loc[changed, "path"] != table.loc[changed, "path"]
    assert not (out / table.loc[deleted, "path"]).exists()
    assert set(outputs(out)) == set(after["path"])
    unchanged = table.index.difference([deleted, changed])
    assert after.loc[unchanged].equals(table.loc[unchanged])


def test_hidden_undecodable_and_duplicate_files_are_skipped_and_reported(few_classes: Path, tmp_path: Path) -> None:
    (few_classes / "upper_A" / ".DS_Store").write_bytes(b"\x00\x01")
    (few_classes / ".hidden_class").mkdir()
    (few_classes / "upper_A" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    original = sorted((few_classes / "lower_b").iterdir())[0]
    shutil.copyfile(original, few_classes / "lower_b" / "zz_copy.png")
    out = tmp_path / "out"
    result = preprocess(small_config(), few_classes, out)
    assert result.images == 24
    assert [source for source, _ in result.failures] == ["upper_A/broken.png"]
    assert result.duplicates == [("lower_b/zz_copy.png", f"lower_b/{original.name}")]
    summary = json.loads((out / "preprocess.json").read_text())
    assert summary["failures"][0]["source"] == "upper_A/broken.png"
    assert "cannot decode" in summary["failures"][0]["error"]
    assert not read_splits(out)["source"].str.contains("DS_Store|broken|zz_copy").any()


def test_preprocess_walks_data_dir_as_validation_does(few_classes: Path, tmp_path: Path) -> None:
    """One walk for both stages, so a class that passes validation's size check keeps its images here."""
    from replearn.data.validation import validate_dataset

    (few_classes / "upper_A" / "Thumbs.db").write_bytes(b"\x00\x01")
    session = few_classes / "lower_b" / "session2"
    session.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(session / "extra.png")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (40, 40), (30, 200, 30)).save(outside)
    (few_classes / "upper_A" / "escapes.png").symlink_to(outside)
    shutil.copyfile(session / "extra.png", few_classes / "loose.png")
    out = tmp_path / "out"
    preprocess(small_config(), few_classes, out)
    sources = set(read_splits(out)["source"])
    assert "lower_b/session2/extra.png" in sources
    assert not {"upper_A/Thumbs.db", "upper_A/escapes.png", "loose.png"} & sources
    config = build_config({"validate": {"on_error": "quarantine", "min_width": 8, "min_height": 8}})
    validated = validate_dataset(config, few_classes, tmp_path / "report")
    assert set(validated.good["path"]) == sources


def test_an_interrupted_run_leaves_only_complete_files(
    few_classes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_save = Image.Image.save
    calls = {"n": 0}

    def failing_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            Path(str(fp)).write_bytes(b"half an image")
            raise KeyboardInterrupt
        real_save(self, fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        preprocess(small_config(workers=1), few_classes, out)
    monkeypatch.undo()
    written = outputs(out)
    assert len(written) == 4 and not any(Path(name).name.startswith(".") for name in written)
    for name in written:
        with Image.open(out / name) as image:
            image.load()
    assert not (out / "splits.csv").exists()
    # A killed run (no chance to clean up) leaves a temporary; the next run sweeps it away.
    stray = out / Path(next(iter(written))).parent / ".stray.png.tmp"
    stray.write_bytes(b"partial")
    result = preprocess(small_config(), few_classes, out)
    assert (result.written, result.skipped) == (20, 4)
    assert set(outputs(out)) == set(read_splits(out)["path"])
    assert not stray.exists()


def test_a_failing_thread_stops_the_others_cleanly(
    few_classes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_save = Image.Image.save
    calls = {"n": 0}

    def failing_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        real_save(self, fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        preprocess(small_config(workers=2), few_classes, out)
    monkeypatch.undo()
    written = outputs(out)
    assert not any(Path(name).name.startswith(".") for name in written)
    for name in written:
        with Image.open(out / name) as image:
            image.load()
    assert not (out / "splits.csv").exists()


def test_refuses_folders_it_does_not_own(few_classes: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="notes.txt, which preprocess did not write"):
        preprocess(small_config(), few_classes, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="outside the data folder"):
        preprocess(small_config(), few_classes, few_classes / "out")
    with pytest.raises(UserError, match="no images"):
        preprocess(small_config(), tmp_path / "mine", tmp_path / "out")
    with pytest.raises(UserError, match="not a folder"):
        preprocess(small_config(), tmp_path / "missing", tmp_path / "out")


def test_jpeg_output(few_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    preprocess(small_config(image_format="jpeg", jpeg_quality=90), few_classes, out)
    path = out / read_splits(out)["path"][0]
    assert path.suffix == ".jpg"
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))


def test_cli_preprocess(few_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--set", "preprocess.resize.size=16", "preprocess", str(few_classes), str(out), "--workers", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "splits" in result.output and "24" in result.output
    assert len(read_splits(out)) == 24
    missing = CliRunner().invoke(app, ["preprocess", str(tmp_path / "nope"), str(out)])
    assert isinstance(missing.exception, UserError)


def test_only_the_listed_files_are_used(few_classes: Path, tmp_path: Path) -> None:
    sources = sorted(f"{p.parent.name}/{p.name}" for p in few_classes.glob("*/*"))
    left_out = [source for source in sources if source.startswith("upper_A/")][:2]
    listed = tmp_path / "good_files.csv"
    pd.DataFrame({"path": [s for s in sources if s not in left_out], "class": "x"}).to_csv(listed, index=False)
    out = tmp_path / "out"
    result = preprocess(small_config(), few_classes, out, only=listed)
    assert (result.images, result.left_out) == (22, 2)
    assert sorted(read_splits(out)["source"]) == [s for s in sources if s not in left_out]
    summary = json.loads((out / "preprocess.json").read_text())
    assert (summary["file_list"], summary["left_out"]) == (str(listed), 2)


def test_an_unusable_file_list_is_refused(few_classes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UserError, match="does not exist"):
        preprocess(small_config(), few_classes, out, only=tmp_path / "missing.csv")
    (tmp_path / "no_path.csv").write_text("file,class\nupper_A/x.png,upper_A\n")
    with pytest.raises(UserError, match="needs a `path` column"):
        preprocess(small_config(), few_classes, out, only=tmp_path / "no_path.csv")
    (tmp_path / "other.csv").write_text("path\nsomewhere/else.png\n")
    with pytest.raises(UserError, match="none of the 24 files"):
        preprocess(small_config(), few_classes, out, only=tmp_path / "other.csv")
    assert not out.exists()


def test_quarantined_files_stay_out_of_preprocessing(few_classes: Path, tmp_path: Path) -> None:
    """validate --on-error quarantine then preprocess --only, as dvc.yaml chains them: the 4 px image is left out."""
    Image.new("RGB", (4, 4), "white").save(few_classes / "upper_A" / "tiny.png")
    settings = ["--set", "train.classes_per_batch=2", "--set", "preprocess.resize.size=16"]
    report, out = tmp_path / "report", tmp_path / "out"
    quarantine = ["--on-error", "quarantine"]
    validated = CliRunner().invoke(app, [*settings, "validate", str(few_classes), str(report), *quarantine])
    assert validated.exit_code == 0, validated.output
    only = ["--only", str(report / "good_files.csv")]
    result = CliRunner().invoke(app, [*settings, "preprocess", str(few_classes), str(out), *only])
    assert result.exit_code == 0, result.output
    assert "left out" in result.output
    sources = set(read_splits(out)["source"])
    assert len(sources) == 24 and "upper_A/tiny.png" not in sources

    # Validation's hashes spare a rerun from reading: only a file whose mtime changed is opened again.
    config = build_config({"preprocess": {"resize": {"size": 16}}})
    assert preprocess(config, few_classes, out, only=report / "good_files.csv").unread == 24
    os.utime(few_classes / sorted(sources)[0], ns=(1, 1))
    again = preprocess(config, few_classes, out, only=report / "good_files.csv")
    assert again.unread == 23 and again.written == 0 and set(read_splits(out)["source"]) == sources


def test_loader_serves_items_and_batches(preprocessed: Path) -> None:
    table = read_splits(preprocessed)
    rows = table[(table["subset"] == "seen") & (table["split"] == "train")]
    data = PreprocessedImages(preprocessed, rows)
    assert len(data) == len(rows)
    assert data.classes == sorted(set(rows["label"]))
    image, label = data[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert data.classes[label] == rows["label"].iloc[3]
    with Image.open(preprocessed / rows["path"].iloc[3]) as reference:
        assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(reference))
    images, labels = data.load_batch([3, 0, 3])
    assert images.shape == (3, 3, 32, 32) and labels.dtype == torch.int64
    assert torch.equal(images[0], image) and labels.tolist() == [label, data.labels[0], label]
    from_disk = PreprocessedImages(preprocessed, rows, in_memory=False)
    assert torch.equal(from_disk.load_batch([3, 0, 3])[0], images)


def test_loader_label_order_and_unknown_labels(preprocessed: Path) -> None:
    rows = read_splits(preprocessed).head(16)
    classes = sorted(set(rows["label"]), reverse=True)
    data = PreprocessedImages(preprocessed, rows, classes=classes, in_memory=False)
    assert [data.classes[i] for i in data.labels] == list(rows["label"])
    with pytest.raises(UserError, match="outside the given classes"):
        PreprocessedImages(preprocessed, rows, classes=classes[:1], in_memory=False)
    empty = PreprocessedImages(preprocessed, pd.DataFrame(columns=COLUMNS))
    assert len(empty) == 0


def test_loader_rejects_mixed_sizes(preprocessed: Path, tmp_path: Path) -> None:
    rows = read_splits(preprocessed).head(3).copy()
    odd = tmp_path / "images" / "odd.png"
    odd.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(odd)
    rows["path"] = [str(preprocessed / rows["path"].iloc[0]), str(preprocessed / rows["path"].iloc[1]), str(odd)]
    with pytest.raises(UserError, match="mixes outputs"):
        PreprocessedImages(tmp_path, rows)


def test_process_image_reports_unreadable_sources(few_classes: Path, tmp_path: Path) -> None:
    settings = preprocess_module.OutputSettings.from_config(small_config().preprocess)
    outcome = preprocess_module.process_image(("upper_A", "upper_A/gone.png"), few_classes, tmp_path, settings, {})
    assert outcome.error.startswith("cannot read")
