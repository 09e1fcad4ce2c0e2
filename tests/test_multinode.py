"""Two local processes as two "nodes" of one DDP job, started the way a cluster starts them (docs/scaling.md).

`env`: each process gets what a Kubeflow PyTorchJob puts into each pod (MASTER_ADDR, MASTER_PORT, WORLD_SIZE,
RANK; LOCAL_RANK 0 with one process per pod) and runs `python -m replearn ... train`. `torchrun`: one agent per
node with --nnodes 2 --node-rank N, as in torchrun across pods. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from replearn.artifacts.checkpoint import read_checkpoint
from replearn.training.model import load_model
from test_distributed import TINY

NODES = 2
RUN = [*TINY, "train.iterations=4", "train.checkpoint_every=2"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def node_environment() -> dict[str, str]:
    """This environment without the variables of any job the tests themselves run in; gloo on the loopback."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RANK", "WORLD_SIZE", "LOCAL_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def node_command(launcher: str, node_rank: int, port: int, preprocessed: Path, out: Path) -> tuple[list[str], dict]:
    arguments = [*(arg for override in RUN for arg in ("--set", override)), "train", str(preprocessed), str(out)]
    env = node_environment()
    if launcher == "env":
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(NODES), RANK=str(node_rank))
        env.update(LOCAL_RANK="0")
        return [sys.executable, "-m", "replearn", *arguments], env
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(NODES), "--node-rank", str(node_rank)]
    torchrun += ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    return [*torchrun, "-m", "replearn", *arguments], env


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["env", "torchrun"])
def test_two_nodes_train_one_model_and_only_rank_zero_writes(
    launcher: str, tiny_preprocessed: Path, tmp_path: Path
) -> None:
    port = free_port()
    outs = [tmp_path / f"node{rank}" / "train" for rank in range(NODES)]
    processes = []
    for rank in range(NODES):
        command, env = node_command(launcher, rank, port, tiny_preprocessed, outs[rank])
        log = (tmp_path / f"node{rank}.log").open("w")
        processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))
    try:
        codes = [process.wait(timeout=240) for process in processes]
    finally:
        for process in processes:
            process.kill()
    logs = [(tmp_path / f"node{rank}.log").read_text()[-3000:] for rank in range(NODES)]
    assert codes == [0, 0], logs

    summary = json.loads((outs[0] / "train_summary.json").read_text())
    assert summary["world_size"] == NODES and summary["iterations"] == 4
    assert summary["global_batch_size"] == NODES * 4 * 4  # classes_per_batch x images_per_class on each node
    assert math.isfinite(summary["final_loss"])
    checkpoint = read_checkpoint(outs[0] / "last.pt")
    assert checkpoint["iteration"] == 4 and len(checkpoint["rng"]["torch"]) == NODES
    assert len((outs[0] / "metrics.csv").read_text().strip().splitlines()) == 1 + 4
    model, config, classes = load_model(outs[0] / "best.pt")
    assert config.train.iterations == 4 and classes
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, config.train.model.embedding_dim)
    assert not outs[1].exists() or not any(outs[1].iterdir()), "only rank 0 writes"
