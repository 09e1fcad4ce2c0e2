"""The preprocess stage: resized RGB copies of the class folders, and the split table.

Outputs are named by the sha256 of the source bytes plus a hash of the output settings, so a
rerun knows what is already done without trusting timestamps: an unchanged image maps to a file
that exists and is skipped, a changed image or changed settings map to a new name and are
redone, and a file no source maps to any more is removed. Every image is written to a temporary
name and renamed, so an interrupted run leaves only complete files (and the stray temporaries of
a killed run are swept up by the next one).

OUT/
  images/<class>/<sha256[:16]>_<settings[:8]>.png   resized RGB copies
  splits.csv                                        path, label, split, subset, group, source, sha256
  preprocess.json                                   settings, counts per subset and split, classes, failures

With `only` (a CSV with a `path` column, such as validation's good_files.csv) the files it does not
list are left out, which is how quarantined files stay out of training.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.pool import ThreadPool
from pathlib import Path

import pandas as pd
from rich.console import Group
from rich.text import Text

from replearn import __version__
from replearn.atomic import atomic_path, write_json_atomic, write_text_atomic
from replearn.config import Config, PreprocessConfig, ResizeConfig
from replearn.console import results_table, track
from replearn.data.images import DECODE_ERRORS, load_image
from replearn.data.manifest import CONTENT_COLUMNS, ScanTotals, display_path, scan_data_dir
from replearn.data.splits import COLUMNS, SPLITS, SPLITS_FILE, SUBSETS, assign_splits, is_wide
from replearn.errors import UserError

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
SUMMARY_FILE = "preprocess.json"
SHOWN = 10  # undecodable files listed on the terminal; preprocess.json lists them all
# Bump when load_image or the encoding changes its pixels: every output name changes, so all is redone.
PIPELINE_VERSION = 1
_OWN_ENTRIES = {IMAGES_DIR, SPLITS_FILE, SUMMARY_FILE}


@dataclass(frozen=True)
class PreprocessSummary:
    """What later stages read back from a preprocessed folder's preprocess.json, rather than work out again."""

    resize: ResizeConfig  # the model's input: training records it in the checkpoint, export in the ONNX file
    data_version: str  # sha256 of splits.csv (16 hex digits): the data a model was trained on
    wide: bool | None = None  # many classes of a few images (data/splits.py); None: a folder older than the key


def read_summary(preprocessed_dir: Path) -> PreprocessSummary | None:
    """The preprocess.json of `preprocessed_dir`; None for a folder that has none (not made by preprocess)."""
    path = Path(preprocessed_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        wide = values.get("wide")
        resize = ResizeConfig.model_validate(values["resize"])
        return PreprocessSummary(resize, str(values["data_version"]), None if wide is None else bool(wide))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is unreadable ({error}); rerun `replearn preprocess`") from None


@dataclass(frozen=True)
class OutputSettings:
    """Everything that decides the pixels of an output file; its hash is part of every output name."""

    resize: ResizeConfig
    image_format: str
    jpeg_quality: int

    @classmethod
    def from_config(cls, config: PreprocessConfig) -> OutputSettings:
        return cls(config.resize, config.image_format, config.jpeg_quality)

    @property
    def digest(self) -> str:
        payload = {
            "version": PIPELINE_VERSION,
            "resize": self.resize.model_dump(mode="json"),
            "format": self.image_format,
        }
        if self.image_format == "jpeg":
            payload["quality"] = self.jpeg_quality
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    @property
    def suffix(self) -> str:
        return ".png" if self.image_format == "png" else ".jpg"

    def output_name(self, sha256: str) -> str:
        return f"{sha256[:16]}_{self.digest[:8]}{self.suffix}"


@dataclass(frozen=True)
class Outcome:
    """What happened to one source image; `error` is set when Pillow could not decode it."""

    label: str
    source: str
    sha256: str = ""
    path: str = ""
    written: bool = False
    read: bool = True  # False: its hash came from validation and its output existed, so it was not opened
    error: str = ""


@dataclass
class PreprocessResult:
    """What a run did and what the output holds; the counts of the output are in preprocess.json too."""

    data_dir: Path
    out_dir: Path
    images: int
    written: int
    skipped: int
    removed: int
    left_out: int = 0  # files in DATA_DIR that the `only` list does not name
    unread: int = 0  # done without opening the source: validation's hash named an existing output
    failures: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    classes: dict[str, list[str]] = field(default_factory=dict)

    def __rich__(self) -> Group:
        """The work done, the split sizes, and the first files that could not be decoded."""
        counts = (self.images, self.written, self.skipped, self.removed, self.left_out)
        work = results_table(
            f"preprocessed {self.data_dir} into {self.out_dir}",
            ("images", "written", "already done", "stale removed", "left out", "undecodable", "duplicates"),
            (*(f"{n:,}" for n in counts), f"{len(self.failures):,}", f"{len(self.duplicates):,}"),
        )
        splits = results_table(
            "splits",
            ("subset", "classes", "train", "val", "test"),
            *(
                (subset, str(len(self.classes[subset])), *(f"{counts[s]:,}" for s in ("train", "val", "test")))
                for subset, counts in self.counts.items()
            ),
        )
        lines = [
            Text.assemble(("skipped", "yellow"), f" {self.data_dir / source}: {error}")
            for source, error in self.failures[:SHOWN]
        ]
        if len(self.failures) > SHOWN:
            lines.append(Text(f"... and {len(self.failures) - SHOWN} more, listed in {self.out_dir / SUMMARY_FILE}"))
        return Group(work, splits, *lines)


def list_images(data_dir: Path) -> list[tuple[str, str]]:
    """(class, source relative to data_dir) for every file below a class folder.

    The files come from validation's walk of DATA_DIR (`manifest.scan_data_dir`), so both stages see
    the same ones: hidden and system files (Thumbs.db) skipped, files in sub-folders counted in their
    top-level class folder, symlinks followed only while they stay inside DATA_DIR. What the walk
    cannot use (a broken or escaping symlink, an unreadable folder) is logged and left out.
    """
    if not data_dir.is_dir():
        raise UserError(f"{data_dir} is not a folder; expected DATA_DIR/<class>/<image>")
    items: list[tuple[str, str]] = []
    for entry in scan_data_dir(data_dir, ScanTotals()):
        shown = display_path(entry.os_path)
        if entry.problem is not None:
            log.warning("skipped %s: %s", shown, entry.problem)
        elif "/" not in entry.os_path:
            log.warning("skipped %s: files must sit in a class folder, DATA_DIR/<class>/<image>", shown)
        else:
            items.append((entry.os_path.split("/", 1)[0], entry.os_path))
    if not items:
        raise UserError(f"{data_dir} holds no images; expected DATA_DIR/<class>/<image>")
    return items


# What validation knew of a file when it hashed it: (bytes, mtime_ns, sha256).
KnownDigests = dict[str, tuple[int, int, str]]


def read_file_list(path: Path) -> pd.DataFrame:
    """A CSV such as validation's good_files.csv: a `path` column relative to DATA_DIR, maybe more."""
    try:
        listed = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"the file list {path} does not exist; `replearn validate` writes good_files.csv") from None
    except (ValueError, pd.errors.ParserError) as error:
        raise UserError(f"{path} is not a file list: {error}") from None
    if "path" not in listed.columns:
        raise UserError(f"{path} is not a file list: it needs a `path` column")
    return listed


def known_digests(listed: pd.DataFrame) -> KnownDigests:
    """The sha256 each listed file had when validation read it, with its size and mtime then."""
    if not set(CONTENT_COLUMNS) <= set(listed.columns):
        return {}
    rows = listed[listed["sha256"] != ""]
    return {
        path: (int(size), int(mtime), digest)
        for path, digest, size, mtime in zip(rows["path"], rows["sha256"], rows["bytes"], rows["mtime_ns"], strict=True)
    }


def keep_listed(items: list[tuple[str, str]], only: Path) -> tuple[list[tuple[str, str]], KnownDigests]:
    """The items whose source `only` names (validation fails non-UTF-8 names, so they are never listed),
    and the hashes the list carries for them."""
    listed = read_file_list(only)
    names = set(listed["path"])
    kept = [item for item in items if item[1] in names]
    if not kept:
        raise UserError(f"none of the {len(items)} files in the data folder is listed in {only}")
    if len(kept) < len(items):
        left_out = len(items) - len(kept)
        log.info("%s lists %d of the %d files; the other %d are left out", only, len(kept), len(items), left_out)
    return kept, known_digests(listed)


def unchanged_digest(path: Path, known: tuple[int, int, str] | None) -> str | None:
    """The hash validation recorded for `path`, if the file still has the size and mtime it had then."""
    if known is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return known[2] if (info.st_size, info.st_mtime_ns) == known[:2] else None


def check_folders(data_dir: Path, out_dir: Path) -> None:
    """Refuse outputs that overlap the data or would clobber a folder this stage did not make."""
    data, out = data_dir.resolve(), out_dir.resolve()
    if out == data or data in out.parents or out in data.parents:
        raise UserError(f"the output folder {out_dir} must lie outside the data folder {data_dir} and vice versa")
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _OWN_ENTRIES and not p.name.startswith("."))
        if foreign:
            raise UserError(
                f"{out_dir} holds {', '.join(foreign[:5])}, which preprocess did not write; "
                "choose an empty or new output folder"
            )
    elif out_dir.exists():
        raise UserError(f"{out_dir} exists and is not a folder")


def process_image(
    item: tuple[str, str], data_dir: Path, out_dir: Path, settings: OutputSettings, known: KnownDigests
) -> Outcome:
    """Hash one source and, unless its output exists, decode, resize and write it atomically.

    A source whose hash validation recorded (and whose size and mtime have not changed since) is
    not even opened when its output exists: a rerun over an unchanged folder reads no image.
    """
    label, source = item
    digest = unchanged_digest(data_dir / source, known.get(source))
    if digest is not None:
        relative = f"{IMAGES_DIR}/{label}/{settings.output_name(digest)}"
        if (out_dir / relative).exists():
            return Outcome(label, source, digest, relative, read=False)
    try:
        data = (data_dir / source).read_bytes()
    except OSError as error:
        return Outcome(label, source, error=f"cannot read: {error}")
    sha256 = hashlib.sha256(data).hexdigest()
    relative = f"{IMAGES_DIR}/{label}/{settings.output_name(sha256)}"
    target = out_dir / relative
    if target.exists():
        return Outcome(label, source, sha256, relative)
    try:
        image = load_image(io.BytesIO(data), settings.resize)
    except DECODE_ERRORS as error:
        return Outcome(label, source, sha256, error=f"cannot decode: {error}")
    with atomic_path(target) as temporary:
        if settings.image_format == "png":
            image.save(temporary, format="PNG", compress_level=1)
        else:
            image.save(temporary, format="JPEG", quality=settings.jpeg_quality, subsampling=0)
    return Outcome(label, source, sha256, relative, written=True)


def run_parallel(
    items: list[tuple[str, str]],
    data_dir: Path,
    out_dir: Path,
    settings: OutputSettings,
    workers: int,
    known: KnownDigests,
) -> Iterator[Outcome]:
    """process_image over all items on a pool of threads, with a progress bar in images/s.

    Threads, not processes: hashing, decoding, resizing and zlib all release the GIL, so
    threads use every core on real photos, while they need no start method (fork is unsafe
    once torch has started its thread pools; spawn re-imports the caller's main module).
    On Ctrl-C the threads finish the image in hand and skip the rest, so no temporary is left.
    """
    threads = min(workers or os.cpu_count() or 1, len(items))
    if threads <= 1:
        work = partial(process_image, data_dir=data_dir, out_dir=out_dir, settings=settings, known=known)
        yield from track(map(work, items), len(items), "preprocessing")
        return
    stop = threading.Event()

    def work_until_stopped(item: tuple[str, str]) -> Outcome:
        if stop.is_set():
            return Outcome(*item, error="interrupted")
        return process_image(item, data_dir, out_dir, settings, known)

    pool = ThreadPool(threads)
    try:
        chunksize = max(1, min(32, len(items) // (threads * 8)))
        yield from track(pool.imap_unordered(work_until_stopped, items, chunksize), len(items), "preprocessing")
    finally:
        stop.set()
        pool.close()
        pool.join()


def drop_duplicates(table: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Keep one row per identical file within a class, so no image is its own query and gallery match."""
    table = table.sort_values(["label", "source"], kind="stable")
    duplicated = table.duplicated(["label", "sha256"], keep="first")
    first = table[~duplicated].set_index(["label", "sha256"])["source"]
    pairs = [(row.source, first[(row.label, row.sha256)]) for row in table[duplicated].itertuples()]
    return table[~duplicated].reset_index(drop=True), pairs


def remove_stale(out_dir: Path, expected: set[str]) -> int:
    """Delete files under OUT/images that no current source maps to (and leftovers of killed runs)."""
    images = out_dir / IMAGES_DIR
    if not images.is_dir():
        return 0
    removed = 0
    for class_dir in sorted(p for p in images.iterdir() if p.is_dir()):
        for path in class_dir.iterdir():
            if f"{IMAGES_DIR}/{class_dir.name}/{path.name}" not in expected and path.is_file():
                path.unlink()
                removed += 0 if path.name.startswith(".") else 1
        if not any(class_dir.iterdir()):
            class_dir.rmdir()
    return removed


def count_splits(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    return {
        subset: {split: int(((table["subset"] == subset) & (table["split"] == split)).sum()) for split in SPLITS}
        for subset in SUBSETS
    }


def preprocess(full_config: Config, data_dir: Path, out_dir: Path, only: Path | None = None) -> PreprocessResult:
    """Write resized copies and splits.csv for DATA_DIR/<class>/<image> into out_dir, incrementally.

    Only the `preprocess` section of the config matters; the whole config is taken, as by every stage.

    Files Pillow cannot decode are skipped and reported (in the result and preprocess.json),
    not fatal: one bad JPEG should not stop a nightly run. splits.csv and preprocess.json are
    replaced only after every image is written, and stale outputs are removed only after that,
    so at every moment splits.csv points at files that exist.
    """
    config = full_config.preprocess
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    check_folders(data_dir, out_dir)
    found = list_images(data_dir)
    items, known = (found, {}) if only is None else keep_listed(found, only)
    settings = OutputSettings.from_config(config)
    log.info("preprocessing %d images from %s into %s", len(items), data_dir, out_dir)
    outcomes = sorted(run_parallel(items, data_dir, out_dir, settings, config.workers, known), key=lambda o: o.source)

    failures = [(o.source, o.error) for o in outcomes if o.error]
    for source, error in failures:
        log.warning("skipped %s: %s", data_dir / source, error)
    done = [o for o in outcomes if not o.error]
    if not done:
        raise UserError(f"none of the {len(items)} files in {data_dir} could be decoded as an image")
    table = pd.DataFrame({key: [getattr(o, key) for o in done] for key in ("path", "label", "source", "sha256")})
    table, duplicates = drop_duplicates(table)
    for source, kept in duplicates:
        log.warning("skipped %s: identical to %s", data_dir / source, data_dir / kept)
    table = assign_splits(table, config.split)[COLUMNS].sort_values(["label", "source"], kind="stable")

    csv_text = table.to_csv(index=False, lineterminator="\n")
    write_text_atomic(out_dir / SPLITS_FILE, csv_text)
    counts = count_splits(table)
    classes = {subset: sorted(table.loc[table["subset"] == subset, "label"].unique()) for subset in SUBSETS}
    write_json_atomic(
        out_dir / SUMMARY_FILE,
        {
            "replearn_version": __version__,
            "settings_hash": settings.digest,
            "resize": config.resize.model_dump(mode="json"),
            "image_format": config.image_format,
            "jpeg_quality": config.jpeg_quality,
            "split": config.split.model_dump(mode="json"),
            "wide": is_wide(table["label"], config.split),
            "images": len(table),
            "file_list": None if only is None else str(only),
            "left_out": len(found) - len(items),
            "counts": counts,
            "classes": classes,
            "failures": [{"source": source, "error": error} for source, error in failures],
            "duplicates": [{"source": source, "same_as": kept} for source, kept in duplicates],
            "data_version": hashlib.sha256(csv_text.encode()).hexdigest()[:16],
        },
    )
    removed = remove_stale(out_dir, set(table["path"]))
    written = sum(o.written for o in done)
    result = PreprocessResult(
        data_dir=data_dir,
        out_dir=out_dir,
        images=len(table),
        written=written,
        skipped=len(done) - written,
        removed=removed,
        left_out=len(found) - len(items),
        unread=sum(not o.read for o in done),
        failures=failures,
        duplicates=duplicates,
        counts=counts,
        classes=classes,
    )
    log.info(
        "%d images: %d written, %d already done (%d of them not even read), %d stale removed, "
        "%d undecodable, %d duplicates",
        result.images,
        result.written,
        result.skipped,
        result.unread,
        result.removed,
        len(failures),
        len(duplicates),
    )
    return result
