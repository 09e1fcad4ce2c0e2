"""The manifest: one row of facts per file under DATA_DIR, the input of the data validation suite.

Why a manifest rather than checking images on the fly: it is built once, in parallel, and cached
by (path, size, mtime), so rerunning validation on an unchanged 100k-image folder only walks the
tree. It is streamed end to end (directory walk -> bounded process pool -> Parquet row groups)
so memory stays flat however many files there are.

Rows appear in walk order (entries sorted by name at every level, depth first), which equals the
lexicographic order of the path components; the cache is read back as a merge join in that order.

Nothing here writes inside DATA_DIR: files are only opened for reading.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import os
import stat
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import ExifTags, Image, UnidentifiedImageError

from replearn.atomic import atomic_path
from replearn.console import make_progress
from replearn.data.images import to_rgb
from replearn.errors import UserError

MANIFEST_VERSION = "1"
SCHEMA = pa.schema(
    [
        pa.field("path", pa.string()),  # relative to DATA_DIR, posix; non-UTF-8 bytes shown as \xNN
        pa.field("class", pa.string()),  # first folder of the path; null for files directly under DATA_DIR
        pa.field("name_is_utf8", pa.bool_()),
        pa.field("bytes", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("format", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("width", pa.int64()),  # as displayed, i.e. after the EXIF orientation is applied
        pa.field("height", pa.int64()),
        pa.field("frames", pa.int64()),
        pa.field("readable", pa.bool_()),  # false: a symlink problem, a special file, or the OS refused to read it
        pa.field("decodable", pa.bool_()),  # null: not tried (unreadable, or above max_pixels)
        pa.field("error", pa.string()),
    ]
)
COLUMNS = SCHEMA.names
# A file's content hash and the size and mtime it was hashed at: later stages trust the hash while both hold.
CONTENT_COLUMNS = ["sha256", "bytes", "mtime_ns"]
# Names that operating systems and tools drop into folders; like dot-files they are not images.
SYSTEM_FILE_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", "__macosx"})
CHUNK_FILES = 32  # files per task sent to a worker: large enough to amortise pickling, small enough to balance
ROW_GROUP = 8192  # rows per Parquet row group: the unit of memory when writing and reading the manifest
ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


def is_hidden_or_system(name: str) -> bool:
    """Dot-files (.DS_Store, ._AppleDouble, .gitignore) and OS litter (Thumbs.db) are never images."""
    return name.startswith(".") or name.casefold() in SYSTEM_FILE_NAMES


def display_path(os_path: str) -> str:
    """The path as valid UTF-8 text: bytes that are not UTF-8 (kept by Python as surrogates) become \\xNN."""
    return os_path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def describe_os_error(error: OSError) -> str:
    """A short reason without Python's '[Errno 13]' noise, e.g. 'permission denied'."""
    if error.errno == errno.EACCES or isinstance(error, PermissionError):
        return "permission denied"
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if error.errno == errno.ENAMETOOLONG:
        return "file name too long for the operating system"
    return (error.strerror or str(error)).lower()


@dataclass
class ScanEntry:
    """One thing found by the walk: a regular file to describe, or a problem that needs no reading."""

    os_path: str  # relative to DATA_DIR, as the OS spells it (may hold surrogate escapes)
    size: int | None = None
    mtime_ns: int | None = None
    problem: str | None = None
    is_dir: bool = False


@dataclass
class ScanTotals:
    """What the walk saw besides files: the class folders (empty ones too) and what it ignored."""

    class_folders: list[str] = field(default_factory=list)
    ignored: int = 0


def scan_data_dir(data_dir: Path, totals: ScanTotals) -> Iterator[ScanEntry]:
    """Walk DATA_DIR lazily in walk order; follow symlinks only while they stay inside it, and detect loops."""
    root = os.path.realpath(data_dir)
    yield from _scan_folder(root, "", frozenset({root}), totals)


def _symlink_problem(full: str, root: str) -> str | None:
    target = os.readlink(full)
    try:
        os.stat(full)
    except OSError as error:
        if error.errno == errno.ENOENT:
            return f"broken symlink: {display_path(target)} does not exist"
        return describe_os_error(error)
    real = os.path.realpath(full)
    if real != root and not real.startswith(root + os.sep):
        return f"symlink points outside DATA_DIR: {display_path(target)}"
    return None


def _scan_folder(root: str, prefix: str, ancestors: frozenset[str], totals: ScanTotals) -> Iterator[ScanEntry]:
    folder = os.path.join(root, prefix) if prefix else root
    try:
        with os.scandir(folder) as iterator:
            entries = sorted(iterator, key=lambda entry: display_path(entry.name))
    except OSError as error:
        if not prefix:
            raise UserError(f"cannot list {folder}: {describe_os_error(error)}") from None
        yield ScanEntry(prefix, problem=f"cannot list folder: {describe_os_error(error)}", is_dir=True)
        return
    for entry in entries:
        if is_hidden_or_system(entry.name):
            totals.ignored += 1
            continue
        relative = f"{prefix}/{entry.name}" if prefix else entry.name
        problem = _symlink_problem(entry.path, root) if entry.is_symlink() else None
        if problem is not None:
            yield ScanEntry(relative, problem=problem, is_dir=os.path.isdir(entry.path))
            continue
        try:
            info = entry.stat()
        except OSError as error:
            yield ScanEntry(relative, problem=describe_os_error(error))
            continue
        if stat.S_ISDIR(info.st_mode):
            real = os.path.realpath(entry.path)
            if real in ancestors:
                yield ScanEntry(relative, problem="symlink loop: points to a folder that contains it", is_dir=True)
                continue
            if not prefix:
                totals.class_folders.append(display_path(entry.name))
            yield from _scan_folder(root, relative, ancestors | {real}, totals)
        elif stat.S_ISREG(info.st_mode):
            yield ScanEntry(relative, size=info.st_size, mtime_ns=info.st_mtime_ns)
        else:
            yield ScanEntry(relative, problem="not a regular file (device, socket or pipe)")


def _base_row(entry: ScanEntry) -> dict[str, Any]:
    shown = display_path(entry.os_path)
    parts = shown.split("/")
    return dict.fromkeys(COLUMNS) | {
        "path": shown,
        "class": parts[0] if len(parts) > 1 or entry.is_dir else None,
        "name_is_utf8": shown == entry.os_path,
        "bytes": entry.size,
        "mtime_ns": entry.mtime_ns,
    }


def inspect_image(data: bytes, max_pixels: int) -> dict[str, Any]:
    """Format, mode, size and frame count, and whether the first frame fully decodes to RGB.

    Decoding goes through `load()` and the shared `to_rgb`, so a file passes only if preprocessing
    can read it. Images above `max_pixels` are measured from their header but not decoded.
    """
    if not data:
        return {"decodable": False, "error": "empty file (0 bytes)"}
    facts: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if image.getexif().get(ExifTags.Base.Orientation, 1) in ROTATED_ORIENTATIONS:
                    width, height = height, width
                facts = {"format": image.format, "mode": image.mode, "width": width, "height": height}
                if width * height > max_pixels:
                    return facts | {
                        "decodable": None,
                        "error": f"not decoded: {width}x{height} = {width * height:,} pixels "
                        f"exceeds validate.max_pixels ({max_pixels:,})",
                    }
                facts["frames"] = getattr(image, "n_frames", 1)
                image.seek(0)
                image.load()
                to_rgb(image)
    except UnidentifiedImageError:
        return facts | {"decodable": False, "error": "not an image Pillow can read"}
    except Image.DecompressionBombError as error:
        return facts | {"decodable": False, "error": f"decompression bomb: {error}"}
    except Exception as error:  # any decoder failure is a fact about the file, never a crash
        return facts | {"decodable": False, "error": f"{type(error).__name__}: {error}"}
    return facts | {"decodable": True}


def describe_file(root: str, entry: ScanEntry, max_pixels: int) -> dict[str, Any]:
    """The manifest row of one file: read it once, hash it, and decode it from memory."""
    row = _base_row(entry)
    if entry.problem is not None:
        return row | {"readable": False, "error": entry.problem}
    try:
        with open(os.path.join(root, entry.os_path), "rb") as handle:
            data = handle.read()
    except OSError as error:
        return row | {"readable": False, "error": describe_os_error(error)}
    row |= {"readable": True, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return row | inspect_image(data, max_pixels)


def describe_files(root: str, entries: list[ScanEntry], max_pixels: int) -> list[dict[str, Any]]:
    """One worker task: a chunk of files, so that pickling costs little per file."""
    return [describe_file(root, entry, max_pixels) for entry in entries]


def _path_key(path: str) -> list[str]:
    return path.split("/")


class ManifestCache:
    """Rows of the previous manifest, read as a merge join in walk order: memory is one row group.

    A row is reused when path, size and mtime match and its content was read (so the facts depend on
    the bytes alone); unreadable files are always retried, since fixing permissions keeps the mtime.
    """

    def __init__(self, path: Path, metadata: dict[bytes, bytes]) -> None:
        self._rows: Iterator[dict[str, Any]] = iter(())
        self._current: dict[str, Any] | None = None
        self.hits = 0
        if not path.is_file():
            return
        try:
            parquet = pq.ParquetFile(path)
            if parquet.schema_arrow.metadata != metadata or parquet.schema_arrow.remove_metadata() != SCHEMA:
                return
        except (OSError, pa.ArrowException):
            return
        self._rows = (row for batch in parquet.iter_batches(batch_size=ROW_GROUP) for row in batch.to_pylist())
        self._current = next(self._rows, None)

    def lookup(self, entry: ScanEntry) -> dict[str, Any] | None:
        shown = display_path(entry.os_path)
        if entry.problem is not None or shown != entry.os_path:
            return None
        key = _path_key(shown)
        while self._current is not None and _path_key(self._current["path"]) < key:
            self._current = next(self._rows, None)
        row = self._current
        if (
            row is not None
            and row["path"] == shown
            and row["bytes"] == entry.size
            and row["mtime_ns"] == entry.mtime_ns
            and row["sha256"] is not None
        ):
            self.hits += 1
            return row
        return None


@dataclass
class ManifestStats:
    """How the manifest was made: what the CLI and the benchmark report."""

    path: Path
    files: int
    described: int
    cached: int
    ignored: int
    class_folders: list[str]
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


def resolve_workers(workers: int) -> int:
    """0 means every core this process may run on."""
    if workers > 0:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


Chunk = list[dict[str, Any] | ScanEntry]


def _chunks(entries: Iterator[ScanEntry], cache: ManifestCache) -> Iterator[Chunk]:
    chunk: Chunk = []
    for entry in entries:
        chunk.append(cache.lookup(entry) or entry)
        if len(chunk) == CHUNK_FILES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _fill(chunk: Chunk, described: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [next(described) if isinstance(item, ScanEntry) else item for item in chunk]


def _describe_in_order(
    chunks: Iterator[Chunk], describe: Callable[[list[ScanEntry]], list[dict[str, Any]]], workers: int
) -> Iterator[list[dict[str, Any]]]:
    """Describe the uncached files of each chunk, in parallel, yielding chunks in walk order.

    At most `4 * workers` chunks are in flight, so a million-file tree never sits in memory;
    Executor.map would submit every task up front.
    """
    if workers == 1:
        for chunk in chunks:
            todo = [item for item in chunk if isinstance(item, ScanEntry)]
            yield _fill(chunk, iter(describe(todo) if todo else []))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[Chunk, Future[list[dict[str, Any]]] | None]] = deque()
        for chunk in chunks:
            todo = [item for item in chunk if isinstance(item, ScanEntry)]
            pending.append((chunk, pool.submit(describe, todo) if todo else None))
            while len(pending) > 4 * workers or (pending and pending[0][1] is None):
                done, future = pending.popleft()
                yield _fill(done, iter(future.result() if future else []))
        while pending:
            done, future = pending.popleft()
            yield _fill(done, iter(future.result() if future else []))


def build_manifest(data_dir: Path, manifest_path: Path, max_pixels: int, workers: int = 0) -> ManifestStats:
    """Write the manifest of DATA_DIR to `manifest_path` (Parquet), reusing the rows of the previous one.

    The cache is the previous manifest itself, valid only if it was made with the same `max_pixels`
    (which decides whether large images were decoded) and manifest version.
    """
    if not data_dir.exists():
        raise UserError(f"DATA_DIR {data_dir} does not exist; expected DATA_DIR/<class>/<image>")
    if not data_dir.is_dir():
        raise UserError(f"DATA_DIR {data_dir} is not a folder; expected DATA_DIR/<class>/<image>")
    started = time.perf_counter()
    metadata = {b"replearn_manifest_version": MANIFEST_VERSION.encode(), b"max_pixels": str(max_pixels).encode()}
    cache = ManifestCache(manifest_path, metadata)
    totals = ScanTotals()
    describe = functools.partial(describe_files, os.path.realpath(data_dir), max_pixels=max_pixels)
    chunks = _describe_in_order(_chunks(scan_data_dir(data_dir, totals), cache), describe, resolve_workers(workers))
    files = 0
    with (
        atomic_path(manifest_path) as temporary,
        pq.ParquetWriter(temporary, SCHEMA.with_metadata(metadata)) as writer,
        make_progress() as progress,
    ):
        task = progress.add_task("manifest", total=None, unit="images")
        buffer: list[dict[str, Any]] = []
        for rows in chunks:
            buffer.extend(rows)
            progress.advance(task, len(rows))
            if len(buffer) >= ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(buffer, schema=SCHEMA))
                files, buffer = files + len(buffer), []
        if buffer:
            writer.write_table(pa.Table.from_pylist(buffer, schema=SCHEMA))
            files += len(buffer)
        if files == 0 and not totals.class_folders:
            raise UserError(f"DATA_DIR {data_dir} is empty; expected DATA_DIR/<class>/<image>")
    return ManifestStats(
        path=manifest_path,
        files=files,
        described=files - cache.hits,
        cached=cache.hits,
        ignored=totals.ignored,
        class_folders=totals.class_folders,
        seconds=time.perf_counter() - started,
    )
