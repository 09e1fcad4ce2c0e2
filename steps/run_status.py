"""The clustering pipeline's hooks: each run's outcome goes in the run status record that `replearn clusters
status outputs/zenml/clusters` prints (replearn/clustering/run_status.py, the one `replearn cluster` keeps),
and a failure goes to the stack's alerter (Slack, Discord, ...) when the stack has one.

ZenML runs a step's failure hook once, after the step's last retry (a retried attempt is not a failure),
so `consecutive_failures` counts runs. The success hook sits on the last step, `report`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from zenml import get_step_context
from zenml.client import Client

from replearn.clustering.run_status import (
    RunStatus,
    describe_success,
    read_run_status,
    record_failure,
    record_success,
)
from replearn.config import Config, load_config

log = logging.getLogger(__name__)


def clusters_dir(config: Config) -> Path:
    """Where the clustering pipeline keeps its catalogue (across production models) and the run status record."""
    return config.data.outputs_dir / "zenml" / "clusters"


def run_clusters_dir() -> Path:
    """clusters_dir of the running pipeline's params file and overrides (its parameters, as the pipeline reads them)."""
    parameters = get_step_context().pipeline_run.config.parameters or {}
    return clusters_dir(load_config(parameters.get("params_file", "params.yaml"), parameters.get("overrides") or []))


def failure_message(status: RunStatus, pipeline: str, run: str, where: Path) -> str:
    """The alert: what failed, why, for how many runs in a row, and when the last good run was."""
    assert status.last_failure is not None
    good = describe_success(status.last_success) if status.last_success else "none recorded"
    runs = "run" if status.consecutive_failures == 1 else "runs in a row"
    return (
        f"replearn: {pipeline} failed ({status.consecutive_failures} {runs}) in step {status.last_failure.step}: "
        f"{status.last_failure.reason}\nrun: {run}\nlast good run: {good}\n"
        f"status: replearn clusters status {where}"
    )


def post_alert(message: str) -> None:
    """Post to the active stack's alerter; without one, the status record and the log are where it shows.

    An alerter that cannot post (Slack unreachable, a revoked token) logs a warning: it never hides the
    failure being reported, nor fails a run.
    """
    alerter = Client().active_stack.alerter
    if alerter is None:
        log.info("no alerter in the active stack: the failure is only in the run status and the log")
        return
    try:
        posted = alerter.post(message)
    except Exception as error:
        log.warning("the alerter %s could not post: %s", alerter.name, error)
        return
    if posted is False:
        log.warning("the alerter %s could not post (see its log above)", alerter.name)


def record_run_failure(exception: BaseException) -> None:
    """on_failure hook of every clustering step: record the failure, then alert."""
    context = get_step_context()
    where = run_clusters_dir()
    status = record_failure(where, exception, step=context.step_run.name)
    post_alert(failure_message(status, context.pipeline.name, context.pipeline_run.name, where))


def record_preflight_failure(config: Config, error: BaseException) -> None:
    """A scheduled run that could not start (no production model): a failed run too (the root clustering.py)."""
    where = clusters_dir(config)
    status = record_failure(where, error, step="preflight")
    post_alert(failure_message(status, "clustering", "not started", where))


def record_run_success() -> None:
    """on_success hook of the last step: the run is good; the end of a streak of failures is worth an alert too."""
    context = get_step_context()
    metadata = Client().get_pipeline_run(context.pipeline_run.id).steps["cluster"].run_metadata
    images, new_images, run = (cast(int, metadata[key]) for key in ("images", "new_images", "run"))
    where = run_clusters_dir()
    before = read_run_status(where)
    status = record_success(where, images=images, new_images=new_images, run=run or None)
    if before.consecutive_failures and status.last_success is not None:
        post_alert(
            f"replearn: {context.pipeline.name} is green again after {before.consecutive_failures} failed run(s): "
            f"{describe_success(status.last_success)}"
        )
