"""Data validation: a Great Expectations suite on the manifest, Data Docs, and the list of files fit to train on.

Why GX on a manifest rather than hand-written checks: the thresholds live in config, every check is
a named expectation whose result (and failing rows) GX records, and the Data Docs give the user a
browsable report of what was checked. Two suites run on an ephemeral context: one on the files,
then one on the classes built from the files that passed, because "at least K images per class"
only makes sense after bad files are set aside.

`validate_dataset` is the stage function. It writes good_files.csv, the files preprocessing may use
(`replearn preprocess --only`), and bad_files.csv, the ones set aside and why. Nothing in DATA_DIR is
ever moved, changed or deleted: quarantine is a list of files.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from replearn.atomic import atomic_directory, atomic_path, write_json_atomic
from replearn.config import Config
from replearn.data.manifest import CONTENT_COLUMNS, ManifestStats, build_manifest, is_hidden_or_system
from replearn.errors import UserError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.parquet"
SUMMARY_NAME = "validation.json"
BAD_FILES_NAME = "bad_files.csv"
GOOD_FILES_NAME = "good_files.csv"
DATA_DOCS_NAME = "data_docs"
EXAMPLES = 10  # offending files kept per check in the summary; bad_files.csv lists them all
MIN_CLASSES = 2  # a loss needs negatives; fewer than train.classes_per_batch fill every batch with all of them
MIN_IMAGES = 2  # an anchor and a positive; the PK sampler draws a class with fewer than K with replacement
BAD_COLUMNS = ["path", "class", "check", "detail"]


@dataclass
class CheckResult:
    """One expectation's verdict, in words a user can act on."""

    name: str
    description: str
    success: bool
    failing: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)  # (file or class, what is wrong)
    observed: Any = None


@dataclass
class ValidationResult:
    """What validation found and where it wrote it; `good` is the part of the manifest fit to preprocess."""

    valid: bool
    on_error: str
    checks: list[CheckResult]
    good: pd.DataFrame
    bad: pd.DataFrame
    dropped_classes: list[str]
    stats: ManifestStats
    out_dir: Path

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_NAME

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_NAME

    @property
    def bad_files_path(self) -> Path:
        return self.out_dir / BAD_FILES_NAME

    @property
    def good_files_path(self) -> Path:
        return self.out_dir / GOOD_FILES_NAME

    @property
    def data_docs_path(self) -> Path:
        return self.out_dir / DATA_DOCS_NAME / "index.html"

    @property
    def failed(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.success]

    def __rich__(self) -> Group:
        return Group(
            report_table(self),
            Text(f"Data Docs: {self.data_docs_path.resolve().as_uri()}"),
            Text(f"summary: {self.summary_path}  bad files: {self.bad_files_path}"),
        )


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest with nullable dtypes, so a missing width stays missing instead of becoming a float."""
    return pd.read_parquet(path, dtype_backend="numpy_nullable")


def files_frame(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest plus the derived columns the file expectations look at."""
    frame = manifest.copy()
    frame["pixels"] = frame["width"] * frame["height"]
    frame["hidden_or_system"] = [any(map(is_hidden_or_system, path.split("/"))) for path in frame["path"]]
    decoded_content = frame["sha256"].where(frame["decodable"].fillna(False))
    frame["content_classes"] = frame.groupby(decoded_content)["class"].transform("nunique").astype("Int64")
    return frame


def classes_frame(class_folders: list[str], usable: pd.DataFrame) -> pd.DataFrame:
    """One row per class folder (empty ones too) with its usable images; `trainable` names the classes PK can use."""
    frame = pd.DataFrame({"class": pd.Series(sorted(class_folders), dtype="string")})
    counts = usable["class"].value_counts()
    frame["images"] = frame["class"].map(counts).fillna(0).astype("Int64")
    frame["folded"] = frame["class"].str.casefold()
    unique_name = ~frame["folded"].duplicated(keep=False)
    frame["trainable"] = frame["class"].where(unique_name & (frame["images"] >= MIN_IMAGES))
    return frame


def warn_below_k(classes: pd.DataFrame, images_per_class: int) -> None:
    """The trainable classes with fewer than K images, with a warning: valid, but their batches repeat images."""
    short = classes.loc[classes["trainable"].notna() & (classes["images"] < images_per_class), "class"].tolist()
    if short:
        log.warning(
            "%d classes have fewer than K=%d images (train.images_per_class), e.g. %s: valid, but the PK sampler "
            "draws their images with replacement, so their batches repeat images",
            len(short),
            images_per_class,
            ", ".join(short[:EXAMPLES]),
        )


def _file_expectations(gxe: Any, config: Config) -> list[tuple[str, str, Any]]:
    cfg = config.validate_
    formats = list(cfg.allowed_formats)
    return [
        (
            "readable",
            "every file is a readable regular file inside DATA_DIR (symlinks followed only inside it)",
            gxe.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        ),
        (
            "decodes",
            "every file fully decodes with Pillow (first frame of an animation)",
            gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
        ),
        (
            "format",
            f"format is one of {', '.join(formats)} (validate.allowed_formats)",
            gxe.ExpectColumnValuesToBeInSet(column="format", value_set=formats),
        ),
        (
            "min_width",
            f"width >= {cfg.min_width} px (validate.min_width)",
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_width),
        ),
        (
            "min_height",
            f"height >= {cfg.min_height} px (validate.min_height)",
            gxe.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_height),
        ),
        (
            "max_pixels",
            f"width x height <= {cfg.max_pixels:,} (validate.max_pixels, decompression-bomb guard)",
            gxe.ExpectColumnValuesToBeBetween(column="pixels", max_value=cfg.max_pixels),
        ),
        (
            "in_class_folder",
            "no file directly under DATA_DIR, outside a class folder",
            gxe.ExpectColumnValuesToNotBeNull(column="class"),
        ),
        (
            "utf8_names",
            "file and folder names are valid UTF-8",
            gxe.ExpectColumnValuesToBeInSet(column="name_is_utf8", value_set=[True]),
        ),
        (
            "no_hidden_files",
            "hidden and system files (.*, Thumbs.db, desktop.ini) are not counted as images",
            gxe.ExpectColumnValuesToBeInSet(column="hidden_or_system", value_set=[False]),
        ),
        (
            "no_leakage",
            "no identical image (same sha256) in two classes",
            gxe.ExpectColumnValuesToBeBetween(column="content_classes", max_value=1),
        ),
    ]


def _class_expectations(gxe: Any, config: Config) -> list[tuple[str, str, Any]]:
    return [
        (
            "min_images",
            f"every class has >= {MIN_IMAGES} usable images (an anchor and a positive)",
            gxe.ExpectColumnValuesToBeBetween(column="images", min_value=MIN_IMAGES),
        ),
        (
            "unique_class_names",
            "class names are unique after case folding",
            gxe.ExpectColumnValuesToBeUnique(column="folded"),
        ),
        (
            "min_classes",
            f">= {MIN_CLASSES} classes with {MIN_IMAGES} usable images (a loss needs negatives)",
            gxe.ExpectColumnUniqueValueCountToBeBetween(column="trainable", min_value=MIN_CLASSES),
        ),
    ]


class ExpectationRunner:
    """An ephemeral GX context with a pandas data source and a Data Docs site in a given folder.

    GX is imported here, not at module level: it takes seconds, and `replearn --help` must not pay that.
    The context's default docs site (a temporary folder) is replaced by ours, and analytics and
    progress bars are off: no network at run time, and stderr stays ours.
    """

    def __init__(self, docs_dir: Path) -> None:
        logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs every registration at INFO
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.gx, self.gxe = gx, gxe
        site = {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        }
        project = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            data_docs_sites={"replearn": site},
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        self.context = gx.get_context(mode="ephemeral", project_config=project)
        self.source = self.context.data_sources.add_pandas("manifest")

    def run(
        self, name: str, frame: pd.DataFrame, index_column: str, expectations: list[tuple[str, str, Any]]
    ) -> list[tuple[str, str, Any]]:
        """Validate `frame` against the expectations; returns (check, description, GX result) in order."""
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = self.context.suites.add(self.gx.ExpectationSuite(name=name))
        for check, description, expectation in expectations:
            expectation.description = description
            expectation.meta = {"check": check}
            suite.add_expectation(expectation)
        definition = self.context.validation_definitions.add(
            self.gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        outcome = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index_column]},
        )
        by_check = {
            result.expectation_config.meta["check"]: result
            for result in outcome.results
            if result.expectation_config is not None
        }
        return [(check, description, by_check[check]) for check, description, _ in expectations]

    def build_docs(self) -> None:
        self.context.build_data_docs(site_names=["replearn"])


def _offenders(result: Any, column: str) -> list[str]:
    return [str(row[column]) for row in result.result.get("unexpected_index_list") or []]


def _file_detail(check: str, row: dict[str, Any], leakage: dict[str, list[str]]) -> str:
    if check in ("readable", "decodes", "max_pixels") and not pd.isna(row["error"]):
        return str(row["error"])
    if check == "format":
        return f"format {row['format']}"
    if check in ("min_width", "min_height", "max_pixels"):
        return f"{row['width']}x{row['height']} px"
    if check == "in_class_folder":
        return "directly under DATA_DIR"
    if check == "utf8_names":
        return "name is not valid UTF-8 (shown with \\x escapes); rename it"
    if check == "no_hidden_files":
        return "hidden or system file"
    others = [name for name in leakage.get(str(row["sha256"]), []) if name != row["class"]]
    return f"same image also in class {', '.join(others)}"


def _class_detail(check: str, row: pd.Series, classes: pd.DataFrame) -> str:
    if check == "min_images":
        return f"{row['images']} usable images"
    same = classes.loc[(classes["folded"] == row["folded"]) & (classes["class"] != row["class"]), "class"]
    return f"same name as {', '.join(same)} after case folding"


def _file_checks(
    runner: ExpectationRunner, files: pd.DataFrame, config: Config
) -> tuple[list[CheckResult], pd.DataFrame]:
    results = runner.run("files", files, "path", _file_expectations(runner.gxe, config))
    rows = files.set_index("path", drop=False)
    shared = files[files["content_classes"].fillna(0) > 1]
    leakage = shared.groupby("sha256")["class"].agg(lambda names: sorted(set(names.dropna()))).to_dict()
    checks, bad = [], []
    for check, description, result in results:
        offending = rows.loc[_offenders(result, "path")].to_dict("records")
        details = [(row["path"], _file_detail(check, row, leakage)) for row in offending]
        checks.append(CheckResult(check, description, bool(result.success), len(details), details[:EXAMPLES]))
        bad += [(row["path"], row["class"], check, detail) for row, (_, detail) in zip(offending, details, strict=True)]
    return checks, pd.DataFrame(bad, columns=BAD_COLUMNS)


def _class_checks(
    runner: ExpectationRunner, classes: pd.DataFrame, config: Config
) -> tuple[list[CheckResult], dict[str, str]]:
    """Class verdicts, and why each class that fails a per-class check cannot be trained on."""
    results = runner.run("classes", classes, "class", _class_expectations(runner.gxe, config))
    rows = classes.set_index("class", drop=False)
    checks: list[CheckResult] = []
    reasons: dict[str, str] = {}
    for check, description, result in results:
        if check == "min_classes":
            observed = result.result.get("observed_value")
            examples = [] if result.success else [("DATA_DIR", f"{observed} classes usable for training")]
            checks.append(CheckResult(check, description, bool(result.success), len(examples), examples, observed))
            continue
        details = [(name, _class_detail(check, rows.loc[name], classes)) for name in _offenders(result, "class")]
        for name, detail in details:
            reasons[name] = f"{reasons[name]}; {detail}" if name in reasons else detail
        checks.append(CheckResult(check, description, bool(result.success), len(details), details[:EXAMPLES]))
    return checks, dict(sorted(reasons.items()))


def _summary(result: ValidationResult, config: Config, data_dir: Path) -> dict[str, Any]:
    """Deterministic (no timings or timestamps), so an unchanged dataset gives an identical file."""
    return {
        "valid": result.valid,
        "on_error": result.on_error,
        "data_dir": str(data_dir),
        "files": result.stats.files,
        "ignored_hidden_or_system": result.stats.ignored,
        "class_folders": len(result.stats.class_folders),
        "good_files": len(result.good),
        "good_classes": int(result.good["class"].nunique()),
        "bad_files": int(result.bad["path"].nunique()),
        "dropped_classes": result.dropped_classes,
        "thresholds": {
            **config.validate_.model_dump(mode="json", include={"allowed_formats", "min_width", "min_height"}),
            "max_pixels": config.validate_.max_pixels,
            "images_per_class": config.train.images_per_class,
        },
        "checks": [
            {
                "name": check.name,
                "description": check.description,
                "success": check.success,
                "failing": check.failing,
                "examples": [{"item": item, "detail": detail} for item, detail in check.examples],
            }
            for check in result.checks
        ],
        "outputs": {
            "manifest": MANIFEST_NAME,
            "bad_files": BAD_FILES_NAME,
            "good_files": GOOD_FILES_NAME,
            "data_docs": f"{DATA_DOCS_NAME}/index.html",
        },
    }


def validate_dataset(
    config: Config, data_dir: Path, out_dir: Path, on_error: str | None = None, workers: int | None = None
) -> ValidationResult:
    """Manifest, expectations, Data Docs, summary and bad-file list for DATA_DIR, written into `out_dir`.

    With on_error="fail" the data is valid only if every expectation passes. With "quarantine" bad
    files and the classes they leave short are set aside (listed in bad_files.csv, with a warning
    per dropped class) and the data is valid when enough classes remain for PK batches.
    The previous manifest in `out_dir` is the cache that makes reruns fast.
    """
    mode = on_error or config.validate_.on_error
    if out_dir.resolve().is_relative_to(data_dir.resolve()):
        raise UserError(f"the report folder {out_dir} is inside DATA_DIR {data_dir}; validate never writes there")
    stats = build_manifest(
        data_dir,
        out_dir / MANIFEST_NAME,
        max_pixels=config.validate_.max_pixels,
        workers=config.validate_.workers if workers is None else workers,
    )
    log.info(
        "manifest: %d files (%d cached, %d read) in %.1f s, %.0f images/s",
        stats.files,
        stats.cached,
        stats.described,
        stats.seconds,
        stats.images_per_second,
    )
    manifest = read_manifest(out_dir / MANIFEST_NAME)
    files = files_frame(manifest)
    with atomic_directory(out_dir / DATA_DOCS_NAME, replace=True) as docs_dir:
        runner = ExpectationRunner(docs_dir)
        file_checks, bad = _file_checks(runner, files, config)
        usable = manifest[~manifest["path"].isin(bad["path"])]
        classes = classes_frame(stats.class_folders, usable)
        class_checks, dropped_classes = _class_checks(runner, classes, config)
        runner.build_docs()
    if mode == "quarantine":
        for name, reason in dropped_classes.items():
            log.warning("quarantine: class %s is left out: %s", name, reason)
    warn_below_k(classes, config.train.images_per_class)
    left_out = usable[usable["class"].isin(dropped_classes)]
    bad = pd.concat(
        [
            bad,
            pd.DataFrame(
                {
                    "path": left_out["path"],
                    "class": left_out["class"],
                    "check": "class_left_out",
                    "detail": [f"class {name}: {dropped_classes[name]}" for name in left_out["class"]],
                }
            ),
        ],
        ignore_index=True,
    )
    good = usable[~usable["class"].isin(dropped_classes)].reset_index(drop=True)
    checks = file_checks + class_checks
    if mode == "quarantine":
        valid = next(check for check in class_checks if check.name == "min_classes").success and not good.empty
    else:
        valid = all(check.success for check in checks)
    result = ValidationResult(valid, mode, checks, good, bad, list(dropped_classes), stats, out_dir)
    with atomic_path(result.bad_files_path) as temporary:
        bad.to_csv(temporary, index=False)
    with atomic_path(result.good_files_path) as temporary:
        good[["path", "class", *CONTENT_COLUMNS]].to_csv(temporary, index=False)
    write_json_atomic(result.summary_path, _summary(result, config, data_dir))
    return result


def report_title(result: ValidationResult) -> str:
    title = "data is valid" if result.valid else "data is NOT valid"
    if result.on_error == "quarantine":
        title += f" (quarantine: {len(result.good):,} good files in {result.good['class'].nunique()} classes kept)"
    return f"{title}: {result.stats.files:,} files, {len(result.stats.class_folders)} class folders"


def report_table(result: ValidationResult, shown: int = 3) -> Table:
    """What passed, what failed, and the first offending files of each failure with a count of the rest."""
    table = Table(title=report_title(result))
    table.add_column("check")
    table.add_column("result")
    table.add_column("failing", justify="right")
    table.add_column("first offenders", overflow="fold")
    for check in result.checks:
        name = check.name if check.success else f"{check.name}\n[dim]{escape(check.description)}[/]"
        status = "[green]passed[/]" if check.success else "[red]FAILED[/]"
        offenders = [f"{escape(item)}: {escape(detail)}" for item, detail in check.examples[:shown]]
        if check.failing > shown:
            offenders.append(f"... and {check.failing - shown:,} more")
        table.add_row(name, status, f"{check.failing:,}" if check.failing else "", "\n".join(offenders))
    return table


def markdown_text(text: str) -> str:
    r"""`text` as literal Markdown inside a table cell: the characters Markdown would act on are escaped.

    File names and error messages come from the user's disk, and may hold any of them.

    >>> print(markdown_text("a|b_<c>* [x](y) >= 8\nz"))
    a\|b\_\<c>\* \[x\](y) >= 8 z
    """
    return re.sub(r"([\\`*_\[\]<|~&])", r"\\\1", " ".join(text.splitlines()))


def report_markdown(result: ValidationResult, shown: int = 3) -> str:
    """The table of `report_table` in Markdown, for the ZenML dashboard, with where the Data Docs are.

    The Data Docs are a site of many files on the local disk; the dashboard's Markdown drops `file:` links,
    so their path is also written out, to paste into a browser.
    """
    lines = [f"### {markdown_text(report_title(result))}", "", "| check | result | failing | first offenders |"]
    lines.append("| --- | --- | ---: | --- |")
    for check in result.checks:
        name = markdown_text(check.name if check.success else f"{check.name}: {check.description}")
        status = "passed" if check.success else "**FAILED**"
        failing = f"{check.failing:,}" if check.failing else ""
        offenders = [f"{markdown_text(item)}: {markdown_text(detail)}" for item, detail in check.examples[:shown]]
        if check.failing > shown:
            offenders.append(f"... and {check.failing - shown:,} more")
        lines.append(f"| {name} | {status} | {failing} | {'; '.join(offenders)} |")
    docs = result.data_docs_path.resolve()
    lines += [
        "",
        f"[Data Docs]({docs.as_uri()}): every expectation with what it observed, at `{docs}`. Bad files are listed "
        f"in `{result.bad_files_path.resolve()}`.",
    ]
    return "\n".join(lines) + "\n"
