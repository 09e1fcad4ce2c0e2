"""Crontab entries that a tag finds again: show, install (idempotent) and remove, keeping the user's other lines.

Generic on purpose: what the entry runs (pipelines/schedule.py builds the `zenml pipeline run
clustering` line) is the caller's business, not the library's.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from replearn.errors import UserError


@dataclass(frozen=True)
class CronEntry:
    """One crontab line: when, what, and a trailing `# tag` comment that install and remove find it by."""

    cron: str
    command: str
    tag: str

    def line(self) -> str:
        """The crontab line.

        >>> CronEntry("@hourly", "echo hi", "demo /repo").line()
        '@hourly echo hi # demo /repo'
        """
        return f"{self.cron} {self.command} # {self.tag}"


def validate_cron(cron: str) -> str:
    """Five whitespace-separated fields, or an @-shortcut such as @hourly.

    >>> validate_cron("*/15  * * * *")
    '*/15 * * * *'
    """
    fields = cron.split()
    if cron.startswith("@") and len(fields) == 1:
        return cron
    if len(fields) != 5:
        raise UserError(f"cron expression '{cron}' needs 5 fields (minute hour day month weekday), e.g. '0 * * * *'")
    return " ".join(fields)


def crontab_available() -> bool:
    return shutil.which("crontab") is not None


def read_crontab() -> list[str]:
    result = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    # `crontab -l` exits 1 with "no crontab for <user>" when there is none yet.
    return result.stdout.splitlines() if result.returncode == 0 else []


def write_crontab(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n" if lines else ""
    result = subprocess.run(["crontab", "-"], input=text, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"crontab refused the new table: {result.stderr.strip()}")


def _is_tagged(line: str, tag: str) -> bool:
    return line.endswith(f"# {tag}")


def installed_entries(tag: str) -> list[str]:
    """The crontab lines carrying `tag` (empty without cron)."""
    return [line for line in read_crontab() if _is_tagged(line, tag)] if crontab_available() else []


def install_schedule(entry: CronEntry) -> bool:
    """Add or replace the entry with the same tag; returns False (installing nothing) when cron is missing."""
    if not crontab_available():
        return False
    kept = [line for line in read_crontab() if not _is_tagged(line, entry.tag)]
    write_crontab(kept + [entry.line()])
    return True


def remove_schedule(tag: str) -> int:
    """Remove the entries carrying `tag`; returns how many there were."""
    if not crontab_available():
        return 0
    lines = read_crontab()
    kept = [line for line in lines if not _is_tagged(line, tag)]
    if len(kept) != len(lines):
        write_crontab(kept)
    return len(lines) - len(kept)
