"""The validate stage: which expectation each bad case fails, quarantine, outputs, and the CLI's exit codes."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from data_corpus import CONFIG, EXPECTED_CLASS_FAILURES, EXPECTED_FAILURES, build_corpus, noise, snapshot
from replearn import cli
from replearn.cli import app
from replearn.data.validation import ValidationResult, report_markdown, validate_dataset
from replearn.errors import UserError

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def failed(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ValidationResult, dict]:
    before = snapshot(corpus.parent)
    result = validate_dataset(CONFIG, corpus, tmp_path_factory.mktemp("report"))
    return result, {"before": before, "after": snapshot(corpus.parent)}


def failures_by_item(result: ValidationResult, names: set[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for check in result.checks:
        if check.name in names:
            for item, _ in check.examples:
                found.setdefault(item, set()).add(check.name)
    return found


def test_each_bad_case_fails_exactly_its_check(failed: tuple[ValidationResult, dict]) -> None:
    result, trees = failed
    assert trees["after"] == trees["before"]
    assert not result.valid
    file_failures = result.bad[result.bad["check"] != "class_left_out"].groupby("path")["check"].agg(set).to_dict()
    assert file_failures == EXPECTED_FAILURES
    class_checks = {"min_images", "unique_class_names"}
    assert failures_by_item(result, class_checks) == EXPECTED_CLASS_FAILURES
    verdicts = {check.name: check.success for check in result.checks}
    assert verdicts["min_classes"] and verdicts["no_hidden_files"]
    assert sorted(result.good["class"].unique()) == ["alpha", "beta", "gamma"]
    assert not set(result.good["path"]) & set(EXPECTED_FAILURES)


def test_messages_name_the_problem(failed: tuple[ValidationResult, dict]) -> None:
    result, _ = failed
    details = {(row.path, row.check): row.detail for row in result.bad.itertuples()}
    assert details["alpha/zero.jpg", "decodes"] == "empty file (0 bytes)"
    assert details["alpha/tiny.png", "min_width"] == "1x1 px"
    assert details["alpha/portable.ppm", "format"] == "format PPM"
    assert details["alpha/good_0.png", "no_leakage"] == "same image also in class delta"
    assert details["delta/copy.png", "no_leakage"] == "same image also in class alpha"
    assert details["stray.png", "in_class_folder"] == "directly under DATA_DIR"
    assert details["gamma/loop.png", "readable"] == "symlink loop"
    classes = {item: detail for check in result.checks for item, detail in check.examples}
    assert classes["empty"] == "0 usable images"
    assert classes["epsilon"] == "same name as EPSILON after case folding"


def test_outputs_are_written(failed: tuple[ValidationResult, dict]) -> None:
    result, _ = failed
    summary = json.loads(result.summary_path.read_text())
    assert summary["valid"] is False
    assert summary["files"] == result.stats.files
    assert {check["name"] for check in summary["checks"] if not check["success"]} == {
        "readable",
        "decodes",
        "format",
        "min_width",
        "min_height",
        "max_pixels",
        "in_class_folder",
        "utf8_names",
        "no_leakage",
        "min_images",
        "unique_class_names",
    }
    assert pd.read_parquet(result.manifest_path).shape[0] == result.stats.files
    assert set(pd.read_csv(result.bad_files_path)["path"]) >= set(EXPECTED_FAILURES)
    assert result.data_docs_path.is_file()
    pages = list((result.data_docs_path.parent / "validations").rglob("*.html"))
    assert {page.parent.parent.parent.name for page in pages} == {"files", "classes"}
    assert not list(result.out_dir.glob(".*.tmp"))


def test_quarantine_keeps_the_good_files(
    corpus: Path, tmp_path: Path, failed: tuple[ValidationResult, dict], caplog: pytest.LogCaptureFixture
) -> None:
    before = snapshot(corpus.parent)
    with caplog.at_level(logging.WARNING):
        result = validate_dataset(CONFIG, corpus, tmp_path, on_error="quarantine")
    assert snapshot(corpus.parent) == before
    assert result.valid
    assert result.dropped_classes == sorted(EXPECTED_CLASS_FAILURES)
    assert all(f"class {name} is left out" in caplog.text for name in EXPECTED_CLASS_FAILURES)
    pd.testing.assert_frame_equal(result.good, failed[0].good)
    listed = pd.read_csv(tmp_path / "bad_files.csv")
    left_out = listed[listed["check"] == "class_left_out"]
    assert sorted(left_out["path"]) == [f"{name}/good_{i}.png" for name in ("EPSILON", "epsilon") for i in (0, 1)]
    assert json.loads((tmp_path / "validation.json").read_text())["good_files"] == len(result.good)
    good_files = pd.read_csv(tmp_path / "good_files.csv")
    columns = ["path", "class", "sha256", "bytes", "mtime_ns"]  # the hashes let preprocessing skip reading
    pd.testing.assert_frame_equal(good_files, result.good[columns], check_dtype=False)


def test_cli_on_clean_data_exits_0(chars_dir: Path, tmp_path: Path) -> None:
    before = snapshot(chars_dir)
    result = runner.invoke(app, ["validate", str(chars_dir), str(tmp_path), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "data is valid" in result.output
    assert "FAILED" not in result.output
    assert (tmp_path / "data_docs" / "index.html").as_uri() in result.output.replace("\n", "")
    rerun = runner.invoke(app, ["validate", str(chars_dir), str(tmp_path)])
    assert rerun.exit_code == 0, rerun.output
    assert json.loads((tmp_path / "validation.json").read_text())["good_files"] == 62 * 8
    assert snapshot(chars_dir) == before


def test_cli_on_bad_data_exits_1_with_a_report(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "stdout", Console(width=200))
    overrides = [f"--set={key}" for key in ("validate.max_pixels=10000", "train.images_per_class=2")]
    result = runner.invoke(app, [*overrides, "validate", str(corpus), str(tmp_path)])
    assert result.exit_code == 1
    assert "data is NOT valid" in result.output
    assert "FAILED" in result.output
    assert "alpha/text.jpg: not an image Pillow can read" in result.output
    assert "... and 1 more" in result.output  # four files fail to decode; three are shown
    quarantined = runner.invoke(app, [*overrides, "validate", str(corpus), str(tmp_path), "--on-error", "quarantine"])
    assert quarantined.exit_code == 0, quarantined.output


@pytest.mark.parametrize(("classes", "valid"), [(1, False), (2, True)])
def test_min_classes_is_two_whatever_p(classes: int, valid: bool, tmp_path: Path) -> None:
    data = tmp_path / "raw"
    for label in range(classes):
        (data / f"c{label}").mkdir(parents=True)
        for index in range(2):
            noise(10 * label + index).save(data / f"c{label}" / f"{index}.png")
    config = CONFIG.model_copy(update={"train": CONFIG.train.model_copy(update={"classes_per_batch": 8})})
    result = validate_dataset(config, data, tmp_path / "report")
    verdicts = {check.name: check.success for check in result.checks}
    assert (result.valid, verdicts["min_classes"]) == (valid, valid)


def test_classes_of_two_images_are_valid_below_k_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Training needs an anchor and a positive; K only says how many a batch draws (with replacement)."""
    data = tmp_path / "raw"
    for label, images in enumerate((2, 2, 1, 4)):
        (data / f"c{label}").mkdir(parents=True)
        for index in range(images):
            noise(10 * label + index).save(data / f"c{label}" / f"{index}.png")
    config = CONFIG.model_copy(update={"train": CONFIG.train.model_copy(update={"images_per_class": 4})})
    with caplog.at_level(logging.WARNING):
        result = validate_dataset(config, data, tmp_path / "report", on_error="quarantine")
    assert result.valid
    assert result.dropped_classes == ["c2"]
    assert sorted(result.good["class"].unique()) == ["c0", "c1", "c3"]
    assert "2 classes have fewer than K=4 images (train.images_per_class), e.g. c0, c1" in caplog.text
    strict = validate_dataset(config, data, tmp_path / "strict")
    assert not strict.valid
    assert {item for check in strict.checks if check.name == "min_images" for item, _ in check.examples} == {"c2"}


def test_default_report_folder_is_outside_the_usual_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`replearn validate data` with the data in ./data must not collide with its own report folder."""
    data = tmp_path / "data"
    for label in range(2):
        (data / f"c{label}").mkdir(parents=True)
        for index in range(2):
            noise(10 * label + index).save(data / f"c{label}" / f"{index}.png")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["--set", "train.images_per_class=2", "validate", "data"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "outputs" / "validate" / "validation.json").is_file()


def test_missing_data_dir_exits_1_without_traceback(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "replearn", "validate", str(tmp_path / "nope"), str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert "does not exist" in " ".join(result.stderr.split())
    assert not (tmp_path / "out").exists()
    assert "Traceback" not in result.stderr


def test_report_inside_data_dir_is_refused(corpus: Path) -> None:
    before = snapshot(corpus.parent)
    with pytest.raises(UserError, match="inside DATA_DIR"):
        validate_dataset(CONFIG, corpus, corpus / "alpha" / "report")
    assert snapshot(corpus.parent) == before


def test_great_expectations_is_imported_only_when_validating() -> None:
    """GX takes seconds to import; `replearn --help` must not pay for it."""
    code = "import sys, replearn.cli, replearn.data.validation; print('great_expectations' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_the_markdown_report_renders_every_check_with_the_names_as_they_are(
    failed: tuple[ValidationResult, dict],
) -> None:
    """What the dashboard shows: one table row per check, file names unharmed by Markdown, the Data Docs' place."""
    from markdown_it import MarkdownIt

    result, _ = failed
    page = report_markdown(result, shown=20)
    tokens = MarkdownIt("commonmark").enable("table").parse(page)
    cells = [token.content for token in tokens if token.type == "inline"]
    header = cells.index("check")
    rows = [cells[header + 4 * i : header + 4 * i + 4] for i in range(1, len(result.checks) + 1)]
    rendered = {row[0].split(":")[0].replace("\\_", "_"): row for row in rows}
    assert list(rendered) == [check.name for check in result.checks]
    assert rendered["utf8_names"][1] == "**FAILED**" and rendered["no_hidden_files"][1] == "passed"
    text = MarkdownIt("commonmark").enable("table").render(page)
    assert "beta/caf\\xe9.png: name is not valid UTF-8 (shown with \\x escapes); rename it" in text
    assert "alpha/big.png: not decoded: 200x100 = 20,000 pixels exceeds validate.max_pixels (10,000)" in text
    assert f"[Data Docs]({result.data_docs_path.resolve().as_uri()})" in page and result.data_docs_path.is_file()
    # Renderers drop file: links (markdown-it here, the dashboard's react-markdown too): the path is written out.
    assert f"<code>{result.data_docs_path.resolve()}</code>" in text
