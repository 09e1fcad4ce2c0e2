"""One ZenML run at a time per repository: concurrent runs can crash at start-up, because
ZenML rewrites .zen/config.yaml without locking. The lock is held until the process exits."""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
LOCK_PATH = Path(__file__).resolve().parents[1] / ".zen" / "run.lock"
_held: list[IO[str]] = []


def hold_run_lock(path: Path = LOCK_PATH) -> None:
    """Block until no other pipeline run of this repository holds the lock, then hold it for good."""
    if _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("another replearn pipeline run holds %s; waiting for it to finish", path)
        fcntl.flock(handle, fcntl.LOCK_EX)
    _held.append(handle)
