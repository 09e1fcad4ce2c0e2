"""`python pipelines/schedule.py show|install|remove`: scheduled batch clustering through the user's crontab.

Run as a script, not with -m: importing the `pipelines` package imports ZenML and every step, which
writing a crontab line does not need.

ZenML's local orchestrator refuses schedules, so cron runs `zenml pipeline run clustering` from
this repository's root, under `flock -n`: a run that is still going makes the next one skip
instead of piling up. Its output goes to outputs/logs/clustering.log, moved to clustering.log.1
when a run starts with it over schedule.log_max_mb. Remote orchestrators (Kubeflow, Kubernetes, ...)
take a run configuration with a `schedule:` block instead, as the comment at the end of zenml_config.yaml shows.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from replearn.config import load_config
from replearn.console import setup_logging
from replearn.errors import UserError
from replearn.schedule import (
    CronEntry,
    crontab_available,
    install_schedule,
    installed_entries,
    remove_schedule,
    validate_cron,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TAG = f"replearn scheduled clustering {REPO_ROOT}"
LOG = "outputs/logs/clustering.log"

log = logging.getLogger(__name__)
stdout = Console()
app = typer.Typer(
    help="Scheduled batch clustering with ZenML's local orchestrator, through your crontab.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)
CronOption = Annotated[
    str | None, typer.Option(help="Crontab expression [default: schedule.cron of the repository's params.yaml].")
]


def rotate_log_command(log: str, max_bytes: int) -> str:
    """POSIX sh that moves `log` to `log`.1 (replacing it) when it is over `max_bytes`: the log stays bounded.

    A size check before each run, as logrotate's `size` rule does, with nothing to install. No `%`,
    which a crontab line would turn into a newline.
    """
    return f'if [ -f {log} ] && [ "$(wc -c < {log})" -gt {max_bytes} ]; then mv -f {log} {log}.1; fi'


def clustering_command(repo_root: Path, log_max_bytes: int) -> str:
    """The shell command cron runs: the clustering pipeline from the repository root, skipped while one runs,
    appending to a log that is rotated when it grows over `log_max_bytes`."""
    root = shlex.quote(str(repo_root))
    zenml = shlex.quote(str(Path(sys.executable).with_name("zenml")))
    return (
        f"cd {root} && mkdir -p outputs/logs && {rotate_log_command(LOG, log_max_bytes)} && "
        f"ZENML_ANALYTICS_OPT_IN=false flock -n .zen/clustering.lock {zenml} pipeline run clustering >> {LOG} 2>&1"
    )


def entry(cron: str | None) -> CronEntry:
    """The entry for `cron`, or for the schedule in the params.yaml the scheduled runs will read (the repository's)."""
    params = REPO_ROOT / "params.yaml"
    schedule = load_config(params if params.is_file() else None).schedule
    command = clustering_command(REPO_ROOT, schedule.log_max_mb * 1024 * 1024)
    return CronEntry(cron=validate_cron(cron or schedule.cron), command=command, tag=TAG)


@app.callback()
def main() -> None:
    setup_logging()


@app.command("show")
def show(cron: CronOption = None) -> None:
    """Print the crontab line that runs the clustering pipeline, and whether it is installed."""
    line = entry(cron).line()
    stdout.print(line, soft_wrap=True, highlight=False)
    if not crontab_available():
        log.warning("crontab is not installed here: add the line above to your scheduler by hand")
    elif installed := installed_entries(TAG):
        log.info("installed: %s", installed[0])
    else:
        log.info("not installed; run `python pipelines/schedule.py install`")


@app.command("install")
def install(cron: CronOption = None) -> None:
    """Add (or replace) the crontab entry that runs `zenml pipeline run clustering` under flock."""
    scheduled = entry(cron)
    if not install_schedule(scheduled):
        stdout.print(scheduled.line(), soft_wrap=True, highlight=False)
        raise UserError("crontab is not installed here, so nothing was installed: add the line above to your scheduler")
    log.info("installed: %s", scheduled.line())


@app.command("remove")
def remove() -> None:
    """Remove this repository's clustering entry from the crontab."""
    removed = remove_schedule(TAG)
    log.info("removed %d entr%s", removed, "y" if removed == 1 else "ies")


if __name__ == "__main__":
    try:
        app()
    except UserError as error:
        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        raise SystemExit(1) from None
