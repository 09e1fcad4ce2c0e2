"""Content hashes of the inbox's files, which tell a scheduled run what is new.

Scheduled runs see the same growing inbox again and again, so OUT keeps the hashes of the last
run (`inbox_hashes.parquet`): a file whose path, size and mtime are unchanged is not read again.
The cache only saves reading; losing it costs one full pass and changes no result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from replearn.artifacts.hashing import sha256_file
from replearn.atomic import atomic_path
from replearn.console import track

log = logging.getLogger(__name__)

HASH_CACHE_NAME = "inbox_hashes.parquet"
CACHE_COLUMNS = ["path", "bytes", "mtime_ns", "sha256"]


@dataclass
class InboxHashes:
    """The readable files (relative paths) with their sha256, and the unreadable ones with the reason."""

    paths: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def printable_name(name: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (kept by the OS as surrogates) become \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_cache(cache_path: Path) -> dict[tuple[str, int, int], str]:
    try:
        cached = pd.read_parquet(cache_path, columns=CACHE_COLUMNS)
    except (OSError, ValueError) as error:  # missing, or damaged: rehash
        if cache_path.exists():
            log.warning("ignoring the unreadable hash cache %s: %s", cache_path, error)
        return {}
    return {(path, int(size), int(mtime)): digest for path, size, mtime, digest in cached.itertuples(index=False)}


def hash_inbox(inbox: Path, names: list[str], cache_path: Path) -> InboxHashes:
    """sha256 of every named file, read only when its (path, size, mtime) is not in the cache; the cache is renewed.

    A file that cannot be read (permission denied, a broken symlink) is reported, not fatal: one
    bad file must not stop a scheduled run. So is a name that is not UTF-8, which the cache, the
    catalogue and the CSVs cannot store: it is listed (as `printable_name`) for the user to rename.
    """
    known = _read_cache(cache_path)
    result, rows = InboxHashes(), []
    for name in track(names, len(names), "hashing"):
        printable = printable_name(name)
        if printable != name:
            result.failures.append((printable, "the file name is not valid UTF-8; rename the file"))
            continue
        try:
            info = (inbox / name).stat()
            key = (name, info.st_size, info.st_mtime_ns)
            digest = known.get(key) or sha256_file(inbox / name)
        except OSError as error:
            result.failures.append((name, f"{type(error).__name__}: {error.strerror or error}"))
            continue
        result.paths.append(name)
        result.sha256.append(digest)
        rows.append((*key, digest))
    with atomic_path(cache_path) as temporary:
        pd.DataFrame(rows, columns=CACHE_COLUMNS).to_parquet(temporary, index=False)
    return result
