"""Logging and progress bars: one look for every stage, silent where nobody is watching.

Progress goes to stderr so that stdout stays clean for tables and machine-readable output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

T = TypeVar("T")

console = Console(stderr=True)


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


def make_progress(*extra_columns: ProgressColumn) -> Progress:
    """A progress display with count, rate, elapsed time and ETA; hidden when stderr is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        disable=not console.is_terminal,
    )


def track(items: Iterable[T], total: int | None, description: str, unit: str = "images") -> Iterator[T]:
    """Iterate with a progress bar showing the rate in `unit`/s."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total, unit=unit)
        for item in items:
            yield item
            progress.advance(task)
