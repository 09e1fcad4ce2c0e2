"""DDP on the CPU with gloo: two processes must learn exactly what one process learns from the same images."""

import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel
from typer.testing import CliRunner

from replearn.artifacts.checkpoint import read_checkpoint
from replearn.cli import app
from replearn.config import Config, TrainConfig, build_config, load_config
from replearn.errors import UserError
from replearn.training.augment import build_augmentation
from replearn.training.datasets import PKBatchDataset
from replearn.training.distributed import RankInfo, process_group, resolve_nproc_per_node, select_device
from replearn.training.loop import batch_loss, read_training_data
from replearn.training.loss import CircleLoss
from replearn.training.model import build_model, load_model
from replearn.training.sampler import PKSampler

TINY = [
    "preprocess.resize.size=32",
    "train.model.d_model=32",
    "train.model.heads=2",
    "train.model.layers=1",
    "train.model.embedding_dim=32",
    "train.model.dropout=0.0",
    "train.classes_per_batch=4",
    "train.images_per_class=4",
    "train.augmentations=[]",
    "train.loader_workers=0",
    "train.devices=cpu",
    "train.timeout_minutes=2",
]


def rank_batch(config: Config, preprocessed: Path, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = read_training_data(preprocessed)
    cfg = config.train
    sampler = PKSampler(data.train.labels, cfg.classes_per_batch, cfg.images_per_class, cfg.seed, rank)
    return PKBatchDataset(data.train, sampler, build_augmentation([], 32))[0]


def one_step(values: dict[str, Any], preprocessed: Path) -> tuple[float, dict[str, torch.Tensor]]:
    """One rank's forward and backward through DDP; returns the loss and the (averaged) gradients, on the CPU."""
    config, ranks = build_config(values), RankInfo.from_env()
    device = select_device(config.train.devices, ranks)
    with process_group(ranks, device, config.train.timeout_minutes):
        torch.manual_seed(0)
        model = build_model(config.train.model).to(device)
        images, labels = rank_batch(config, preprocessed, ranks.rank)
        loss_fn = CircleLoss(config.train.loss.margin, config.train.loss.gamma)
        # kept alive: its reducer averages the gradients during backward
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        loss = batch_loss(ddp, loss_fn, images, labels, device)
        loss.backward()
        return loss.item(), {name: p.grad.cpu() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("devices", "tolerance"),
    [pytest.param("cpu", 1e-5, id="gloo"), pytest.param("cuda", 1e-4, marks=pytest.mark.gpu(devices=2), id="nccl")],
)
def test_two_processes_equal_one_process_on_the_concatenated_batch(
    tiny_preprocessed: Path, tmp_path: Path, devices: str, tolerance: float
) -> None:
    """gloo on the CPU; NCCL with one GPU per rank where two are visible (the single process then runs on GPU 0)."""
    config = load_config(None, [*TINY, f"train.devices={devices}"])
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=2,
        logs_specs=DefaultLogsSpecs(log_dir=str(tmp_path)),
        run_id=f"test-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
    )
    results = elastic_launch(launch, one_step)(config.model_dump(mode="json", by_alias=True), tiny_preprocessed)

    device = select_device(devices, RankInfo())
    torch.manual_seed(0)
    model = build_model(config.train.model).to(device)
    batches = [rank_batch(config, tiny_preprocessed, rank) for rank in (0, 1)]
    # Batch norm statistics are per rank under DDP, so each rank's images go through the model apart;
    # everything after the embeddings (the loss over all pairs) sees the concatenated batch.
    embeddings = torch.cat([model(images.to(device)) for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches]).to(device)
    loss = CircleLoss(config.train.loss.margin, config.train.loss.gamma)(embeddings, labels)
    loss.backward()

    for rank in (0, 1):
        rank_loss, grads = results[rank]
        assert rank_loss == pytest.approx(loss.item(), abs=tolerance)
        assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
        for name, parameter in model.named_parameters():
            if parameter.grad is not None:
                torch.testing.assert_close(grads[name], parameter.grad.cpu(), atol=tolerance, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_cli_launches_two_processes_and_the_checkpoint_loads_in_one(tiny_preprocessed: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    args = [arg for override in TINY for arg in ("--set", override)]
    command = [*args, "--set", "train.iterations=3", "train", str(tiny_preprocessed), str(out), "--nproc-per-node", "2"]
    agent_dirs_before = set(Path(tempfile.gettempdir()).glob("torchelastic_*"))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert set(Path(tempfile.gettempdir()).glob("torchelastic_*")) == agent_dirs_before  # nothing left in /tmp
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 32
    assert len(read_checkpoint(out / "last.pt")["rng"]["torch"]) == 2
    model, config, classes = load_model(out / "best.pt")
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 32)

    # torchrun -m replearn ... train resumes the same run with one process (a different number of ranks)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--standalone"]
    resumed = subprocess.run(
        [*torchrun, "-m", "replearn", *args, "--set", "train.iterations=4", "train", str(tiny_preprocessed), str(out)]
        + ["--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_checkpoint(out / "last.pt")["iteration"] == 4
    assert json.loads((out / "train_summary.json").read_text())["world_size"] == 1


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="nproc_per_node=2 but only 1 GPU"):
        resolve_nproc_per_node(TrainConfig(devices="cuda", nproc_per_node="2"))
    assert resolve_nproc_per_node(TrainConfig(devices="cuda", nproc_per_node="auto")) == 1
    assert resolve_nproc_per_node(TrainConfig(devices="cpu", nproc_per_node="3")) == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_nproc_per_node(TrainConfig(devices="auto", nproc_per_node="auto")) == 1
    with pytest.raises(UserError, match="a number or auto"):
        resolve_nproc_per_node(TrainConfig(nproc_per_node="many"))


def test_sync_batchnorm_on_cpu_ranks_is_refused(tiny_preprocessed: Path, tmp_path: Path, monkeypatch) -> None:
    from replearn.training.loop import train_process

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load_config(None, [*TINY, "train.sync_batchnorm=true"])
    with pytest.raises(UserError, match="sync_batchnorm needs CUDA"):
        train_process(config, tiny_preprocessed, tmp_path / "out")
