"""How scheduled clustering runs into one OUT folder are going: the last good run, the last failure with
its one-line reason, and how many runs in a row have failed (`replearn clusters status OUT` prints it).

One small JSON file, OUT/run_status.json, replaced atomically. `replearn cluster` writes it, and so do
the clustering pipeline's ZenML hooks (steps/run_status.py), so cron users with or without ZenML see
the same record. Its size is constant: it keeps the last of each, not a history (the runs themselves
are in OUT/runs/ and in ZenML).
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.text import Text

from replearn.atomic import write_json_atomic
from replearn.errors import UserError

STATUS_FILE = "run_status.json"
REASON_MAX_CHARS = 300


@dataclass(frozen=True)
class GoodRun:
    """A run that finished: `run` is the catalogue's run number, None when there was nothing new."""

    at: str
    images: int
    new_images: int
    run: int | None = None


@dataclass(frozen=True)
class FailedRun:
    at: str
    reason: str
    step: str | None = None


@dataclass(frozen=True)
class RunStatus:
    last_success: GoodRun | None = None
    last_failure: FailedRun | None = None
    consecutive_failures: int = 0

    def __rich__(self) -> Text:
        good = self.last_success
        failed = self.last_failure
        lines = [
            f"last good run:        {describe_success(good) if good else 'none recorded'}",
            f"last failure:         {describe_failure(failed) if failed else 'none recorded'}",
            f"consecutive failures: {self.consecutive_failures}",
        ]
        return Text("\n".join(lines), style="bold red" if self.consecutive_failures else "")


def describe_success(good: GoodRun) -> str:
    """
    >>> describe_success(GoodRun("2025-01-02T03:04:05Z", images=40, new_images=12, run=5))
    '2025-01-02T03:04:05Z, run 5: 12 new of 40 images'
    >>> describe_success(GoodRun("2025-01-02T03:04:05Z", images=40, new_images=0))
    '2025-01-02T03:04:05Z, nothing new among 40 images'
    """
    if good.run is None:
        return f"{good.at}, nothing new among {good.images:,} images"
    return f"{good.at}, run {good.run}: {good.new_images:,} new of {good.images:,} images"


def describe_failure(failed: FailedRun) -> str:
    where = f" in step {failed.step}" if failed.step else ""
    return f"{failed.at}{where}: {failed.reason}"


def one_line_reason(error: BaseException | str) -> str:
    """The error's type and the first line of its message, shortened to fit a status line or an alert.

    >>> one_line_reason(OSError(5, "Input/output error"))
    'OSError: [Errno 5] Input/output error'
    >>> one_line_reason(UserError("no production model\\nrun training first"))
    'no production model'
    """
    if isinstance(error, str):
        text = error
    else:
        message = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        # A UserError's message is written for the user; other errors need their type to make sense.
        text = message if isinstance(error, UserError) and message else f"{type(error).__name__}: {message}".strip()
    text = " ".join(text.split())
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 1] + "…"


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_run_status(out_dir: Path) -> RunStatus:
    """OUT's record; an empty one when no run has recorded anything yet."""
    path = Path(out_dir) / STATUS_FILE
    if not path.is_file():
        return RunStatus()
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return RunStatus(
            last_success=GoodRun(**data["last_success"]) if data.get("last_success") else None,
            last_failure=FailedRun(**data["last_failure"]) if data.get("last_failure") else None,
            consecutive_failures=int(data.get("consecutive_failures", 0)),
        )
    except (ValueError, TypeError, KeyError) as error:
        raise UserError(f"{path} is not a run status record ({error}); delete it to start a new one") from None


@contextmanager
def _status_lock(out_dir: Path) -> Iterator[None]:
    """Read, update and write the record under a lock, so two processes never lose each other's update."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / f".{STATUS_FILE}.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _write(out_dir: Path, status: RunStatus) -> None:
    write_json_atomic(out_dir / STATUS_FILE, asdict(status))


def record_success(out_dir: Path, images: int, new_images: int, run: int | None, at: str | None = None) -> RunStatus:
    """A run that finished, with or without new images: the failure streak ends."""
    out_dir = Path(out_dir)
    with _status_lock(out_dir):
        good = GoodRun(at=at or now_utc(), images=images, new_images=new_images, run=run)
        status = replace(read_run_status(out_dir), last_success=good, consecutive_failures=0)
        _write(out_dir, status)
    return status


def record_failure(
    out_dir: Path, error: BaseException | str, step: str | None = None, at: str | None = None
) -> RunStatus:
    """A run that failed (after its retries): the last failure and one more in the streak."""
    out_dir = Path(out_dir)
    with _status_lock(out_dir):
        previous = read_run_status(out_dir)
        failed = FailedRun(at=at or now_utc(), reason=one_line_reason(error), step=step)
        status = replace(previous, last_failure=failed, consecutive_failures=previous.consecutive_failures + 1)
        _write(out_dir, status)
    return status
