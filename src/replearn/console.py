"""Logging and progress bars: one look for every stage.

Progress goes to stderr so that stdout stays clean for tables and machine-readable output. Where
no terminal shows a bar (DVC, ZenML, cron and their log files), long work logs a line a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

T = TypeVar("T")

console = Console(stderr=True)
log = logging.getLogger(__name__)
PROGRESS_LOG_SECONDS = 60.0


def setup_logging(verbose: bool = False) -> None:
    """Route the standard logging module through rich; `verbose` shows debug messages."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=verbose, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("PIL", "matplotlib", "fontTools", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


class RateColumn(ProgressColumn):
    """Items per second, with the task's own unit (images/s, it/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


class LoggedProgress(Progress):
    """A rich Progress that, when its bar is hidden, logs each task's state every `interval` seconds."""

    def __init__(self, *columns: ProgressColumn, interval: float, log_lines: bool, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.interval = interval
        self.log_lines = log_lines
        self._last_line: dict[TaskID, float] = {}

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log_now_and_then(task_id)

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._log_now_and_then(task_id)

    def _log_now_and_then(self, task_id: TaskID) -> None:
        if not self.log_lines:
            return
        now = time.monotonic()
        if now - self._last_line.setdefault(task_id, now) < self.interval:
            return
        self._last_line[task_id] = now
        log.info("%s", describe_task(next(task for task in self.tasks if task.id == task_id)))


def describe_task(task: Task) -> str:
    """'training: 300/1,000 (30%), 2.1 it/s, about 0:05:33 left, loss 5.21, lr 0.0009'."""
    unit = task.fields.get("unit", "it")
    parts = [f"{task.description}: {task.completed:,.0f}" + (f"/{task.total:,.0f}" if task.total else "")]
    if task.total:
        parts[0] += f" ({task.percentage:.0f}%)"
    if task.speed:
        parts.append(f"{task.speed:,.1f} {unit}/s")
    if task.time_remaining is not None:
        parts.append(f"about {timedelta(seconds=round(task.time_remaining))} left")
    parts.extend(f"{name} {value:.4g}" for name, value in task.fields.items() if isinstance(value, float))
    return ", ".join(parts)


def make_progress(*extra_columns: ProgressColumn, show: bool = True) -> LoggedProgress:
    """Count, rate, elapsed time and ETA: a bar on a terminal, else a log line a minute; nothing if not `show`."""
    return LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        disable=not (show and console.is_terminal),
        interval=PROGRESS_LOG_SECONDS,
        log_lines=show and not console.is_terminal,
    )


def track(items: Iterable[T], total: int | None, description: str, unit: str = "images") -> Iterator[T]:
    """Iterate with a progress bar showing the rate in `unit`/s."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total, unit=unit)
        for item in items:
            yield item
            progress.advance(task)


def results_table(title: str, columns: Sequence[str], *rows: Sequence[str]) -> Table:
    """Right-aligned columns of formatted cells: the one look of every stage's summary of what it did."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def class_folders_table(root: Path, counts: dict[str, int]) -> Table:
    """Classes, images and bytes written, so the user sees at a glance what a data generator made."""
    total_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return results_table(
        f"class folders in {root}",
        ("classes", "images", "bytes", "smallest class", "largest class"),
        (
            str(len(counts)),
            f"{sum(counts.values()):,}",
            f"{total_bytes:,}",
            str(min(counts.values(), default=0)),
            str(max(counts.values(), default=0)),
        ),
    )
