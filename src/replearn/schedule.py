"""A crontab entry for scheduled batch clustering with ZenML's local orchestrator, which refuses schedules.

The entry runs `zenml pipeline run clustering` from the repository root under `flock -n`, so a
run that is still going makes the next one skip instead of piling up. Remote orchestrators
(Kubeflow, Kubernetes, ...) take a run configuration with a `schedule:` block instead, as the
comment at the end of zenml_config.yaml shows.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from replearn.errors import UserError

MARKER = "# replearn scheduled clustering"


@dataclass(frozen=True)
class CronEntry:
    """One crontab line with the marker comment that lets install/remove find it again."""

    cron: str
    repo_root: Path

    def command(self) -> str:
        root = shlex.quote(str(self.repo_root))
        zenml = shlex.quote(str(Path(sys.executable).with_name("zenml")))
        return (
            f"cd {root} && mkdir -p outputs/logs && ZENML_ANALYTICS_OPT_IN=false "
            f"flock -n .zen/clustering.lock {zenml} pipeline run clustering >> outputs/logs/clustering.log 2>&1"
        )

    def line(self) -> str:
        return f"{self.cron} {self.command()} {MARKER} {self.repo_root}"


def validate_cron(cron: str) -> str:
    """Five whitespace-separated fields, or an @-shortcut such as @hourly."""
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


def _is_ours(line: str, repo_root: Path) -> bool:
    return line.endswith(f"{MARKER} {repo_root}")


def installed_entries(repo_root: Path) -> list[str]:
    """This repository's clustering entries in the user's crontab (empty without cron)."""
    return [line for line in read_crontab() if _is_ours(line, repo_root)] if crontab_available() else []


def install_schedule(entry: CronEntry) -> bool:
    """Add or replace this repository's entry; returns False (installing nothing) when cron is missing."""
    if not crontab_available():
        return False
    kept = [line for line in read_crontab() if not _is_ours(line, entry.repo_root)]
    write_crontab(kept + [entry.line()])
    return True


def remove_schedule(repo_root: Path) -> int:
    """Remove this repository's entries; returns how many there were."""
    if not crontab_available():
        return 0
    lines = read_crontab()
    kept = [line for line in lines if not _is_ours(line, repo_root)]
    if len(kept) != len(lines):
        write_crontab(kept)
    return len(lines) - len(kept)
