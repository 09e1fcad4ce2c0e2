"""Distributed data parallel: ranks from the environment, one launcher, and embeddings gathered with gradients.

The same code runs as one process or as many: `RANK`, `WORLD_SIZE` and `LOCAL_RANK` come from the
environment (set by torchrun or by `replearn.training.train.launch_training`), and with a world of one
every helper here is the identity. Each rank embeds its own PK batch; the embeddings of all ranks are gathered with
their gradients, so every anchor sees the negatives of every rank and the loss over the global batch
is the single-process loss over the same images.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from replearn.config import TrainConfig
from replearn.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, validates and writes."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> RankInfo:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )


def select_device(devices: str, ranks: RankInfo) -> torch.device:
    """The device of this rank: auto picks CUDA when present; with several ranks, GPU LOCAL_RANK."""
    if devices == "auto":
        devices = "cuda" if torch.cuda.is_available() else "cpu"
    if devices == "cpu":
        return torch.device("cpu")
    if not devices.startswith("cuda"):
        raise UserError(f"train.devices={devices!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"train.devices={devices!r} but no CUDA device is visible; use auto or cpu")
    if devices == "cuda":
        index = ranks.local_rank
    elif ranks.world_size > 1:
        raise UserError(f"train.devices={devices!r} names one GPU, but {ranks.world_size} processes need one each")
    else:
        index = int(devices.split(":", 1)[1])
    if index >= torch.cuda.device_count():
        raise UserError(f"GPU {index} requested but only {torch.cuda.device_count()} visible")
    return torch.device("cuda", index)


def resolve_nproc_per_node(config: TrainConfig) -> int:
    """Processes to start on this node: a number, or auto for every visible GPU (one on a CPU-only machine).

    More processes than GPUs is an error when training on GPUs: two ranks on one GPU only fight over it.
    """
    gpus = torch.cuda.device_count()
    on_gpu = config.devices.startswith("cuda") or (config.devices == "auto" and gpus > 0)
    value = config.nproc_per_node.strip().lower()
    if value == "auto":
        return max(gpus, 1) if on_gpu else 1
    try:
        count = int(value)
    except ValueError:
        raise UserError(f"train.nproc_per_node={config.nproc_per_node!r}: expected a number or auto") from None
    if count < 1:
        raise UserError(f"train.nproc_per_node must be at least 1, got {count}")
    if on_gpu and count > gpus:
        raise UserError(f"train.nproc_per_node={count} but only {gpus} GPU(s) are visible; use {gpus} or auto")
    return count


@contextmanager
def process_group(ranks: RankInfo, device: torch.device, timeout_minutes: float) -> Iterator[None]:
    """Join the job's process group (NCCL on CUDA, gloo on CPU) for the block; no-op for one process.

    The timeout bounds every collective, so a dead or stuck rank makes the others fail instead of
    waiting forever.
    """
    if ranks.world_size == 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=timedelta(minutes=timeout_minutes),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` in rank order; gradients flow back to each rank's own part."""
    if not is_distributed():
        return tensor
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the documented autograd path
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_nn.all_gather(tensor.contiguous()))


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` in rank order, without gradients (labels)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (the RNG states that go into a checkpoint)."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    """Wait for every rank (while rank 0 validates and writes); bounded by the group's timeout."""
    if is_distributed():
        dist.barrier()
