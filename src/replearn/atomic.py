"""Write to a temporary path, then rename into place, so a crash never leaves a half-written artifact."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `target`; it replaces `target` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        # mkstemp makes the file private (0600); give it the mode any other new file would get.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(target: Path, data: bytes) -> None:
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(target: Path, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: Path, payload: Any, compact: bool = False) -> None:
    """JSON with sorted keys and a trailing newline, so reruns write identical bytes.

    `compact` writes one line: json's C encoder serves only unindented output, and for a file that
    lists thousands of clusters it is several times faster than the indented Python one.
    """
    indent = None if compact else 2
    write_text_atomic(target, json.dumps(payload, indent=indent, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_directory(target: Path, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`, renamed to `target` when the block succeeds.

    An existing `target` is an error unless `replace`, in which case it is swapped out only
    after the new directory is complete.
    """
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield temporary
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(temporary, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
