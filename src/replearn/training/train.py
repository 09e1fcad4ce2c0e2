"""The training stage's entry: train here, or launch one process per device and gather rank 0's result.

`train(config, preprocessed_dir, out_dir) -> TrainResult` decides; `launch_training` starts the local
processes through torch's elastic launch API, each of which enters at `_train_worker` and runs
`loop.train_process`. Under torchrun (`torchrun ... -m replearn train ...`) every process is already
a rank and trains directly.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from replearn.config import Config, build_config
from replearn.console import setup_logging
from replearn.data.splits import read_splits
from replearn.errors import UserError
from replearn.training.distributed import resolve_nproc_per_node
from replearn.training.loop import TrainResult, prepare_out_dir, train_process

log = logging.getLogger(__name__)


def train(
    config: Config, preprocessed_dir: Path, out_dir: Path, resume: bool = False, force: bool = False
) -> TrainResult:
    """Train the embedding model on the seen train split of `preprocessed_dir`; outputs go to `out_dir`.

    Under torchrun (RANK/WORLD_SIZE set) this process is one rank of the job. Otherwise, with
    train.nproc_per_node above one, it launches that many local processes and returns rank 0's
    result; with one, it trains right here.
    """
    if "WORLD_SIZE" not in os.environ:
        nproc = resolve_nproc_per_node(config.train)
        if nproc > 1:
            prepare_out_dir(Path(out_dir), resume, force)
            read_splits(preprocessed_dir)
            result: TrainResult = launch_training(config, Path(preprocessed_dir), Path(out_dir), nproc, resume, force)
            return result
    return train_process(config, preprocessed_dir, out_dir, resume, force)


def _train_worker(
    config_values: dict[str, Any], preprocessed_dir: Path, out_dir: Path, resume: bool, force: bool
) -> TrainResult:
    """Entry point of each launched process: the ranks come from the environment the launcher set."""
    setup_logging()
    return train_process(build_config(config_values), preprocessed_dir, out_dir, resume=resume, force=force)


def launch_training(
    config: Config, preprocessed_dir: Path, out_dir: Path, nproc: int, resume: bool, force: bool
) -> TrainResult:
    """Start `nproc` training processes on this machine through torch's elastic launch API; rank 0's result.

    No shell script and no torchrun needed; for several machines use `torchrun -m replearn ... train`.
    When one rank dies the agent stops the others (max_restarts=0), so nothing is left hanging.
    The agent's per-run folder (workers' error files) lives in a temporary folder removed afterwards:
    left to itself, torch leaves a /tmp/torchelastic_* folder behind on every run.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    values = config.model_dump(mode="json", by_alias=True)
    log.info("launching %d training processes", nproc)
    with tempfile.TemporaryDirectory(prefix="replearn-elastic-") as agent_dir:
        launch_config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            logs_specs=DefaultLogsSpecs(log_dir=agent_dir),
            run_id=f"replearn-{uuid.uuid4().hex[:8]}",
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=1,
        )
        try:
            results = elastic_launch(launch_config, _train_worker)(values, preprocessed_dir, out_dir, resume, force)
        except Exception as error:
            raise UserError(f"distributed training failed: {str(error).strip()[:2000]}") from None
    return results[0]
