"""What a training run carries besides its weights: the loop's state, the RNG streams and metrics.csv.

All three survive an interruption: the state and RNG states go into each checkpoint (and come back on
resume), and metrics.csv keeps the rows up to the checkpoint the run resumes from.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from replearn.atomic import write_text_atomic

METRIC_COLUMNS = ["iteration", "loss", "lr", "grad_norm", "images_per_second", "elapsed_seconds", "val_precision_at_1"]


@dataclass
class RunState:
    """What the loop carries from checkpoint to checkpoint besides the weights."""

    start: int = 0
    elapsed_before: float = 0.0
    loss: float = math.nan
    val: float = math.nan
    best: float = -1.0
    best_iteration: int = 0

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> RunState:
        metrics = saved["metrics"]
        return cls(
            start=int(saved["iteration"]),
            elapsed_before=float(metrics["elapsed_seconds"]),
            loss=float(metrics["loss"]),
            val=float(metrics["val_precision_at_1"]),
            best=float(metrics["best_val_precision_at_1"]),
            best_iteration=int(metrics["best_iteration"]),
        )

    def record_validation(self, value: float, iteration: int) -> float:
        """Remember a validation result; the best so far (any result, without a val split) is kept."""
        self.val = value
        if not value <= self.best:
            self.best, self.best_iteration = value, iteration
        return value

    def metrics(self, elapsed: float) -> dict[str, float]:
        return {
            "loss": self.loss,
            "val_precision_at_1": self.val,
            "best_val_precision_at_1": self.best,
            "best_iteration": self.best_iteration,
            "elapsed_seconds": elapsed,
        }


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def restore_rng(states: dict[str, list[torch.Tensor]], rank: int, device: torch.device, fallback_seed: int) -> None:
    """This rank's saved RNG states; a rank the checkpoint did not have (more ranks now) gets a fresh stream."""
    if rank >= len(states["torch"]):
        torch.manual_seed(fallback_seed)
        return
    torch.set_rng_state(states["torch"][rank])
    if device.type == "cuda" and rank < len(states["cuda"]):
        torch.cuda.set_rng_state(states["cuda"][rank], device)


class MetricsLog:
    """metrics.csv, one row per iteration, flushed as it goes so DVC plots and tail -f see progress.

    On resume it keeps the rows up to the checkpoint and drops the ones an interrupted run wrote after it.
    Only rank 0 writes (`enabled`).
    """

    def __init__(self, path: Path, keep_until: int | None, enabled: bool) -> None:
        self.path, self.keep_until, self.enabled = path, keep_until, enabled
        self.handle: Any = None

    def __enter__(self) -> MetricsLog:
        if not self.enabled:
            return self
        rows: list[dict[str, str]] = []
        if self.keep_until is not None and self.path.is_file():
            with self.path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["iteration"]) <= self.keep_until]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [",".join(METRIC_COLUMNS)] + [",".join(row.get(c, "") for c in METRIC_COLUMNS) for row in rows]
        write_text_atomic(self.path, "\n".join(lines) + "\n")
        self.handle = self.path.open("a", newline="")
        return self

    def write(self, row: dict[str, float]) -> None:
        if self.handle is not None:
            self.handle.write(",".join(_format(row.get(column)) for column in METRIC_COLUMNS) + "\n")
            self.handle.flush()

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


def _format(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value) if isinstance(value, int) else f"{value:.6g}"
