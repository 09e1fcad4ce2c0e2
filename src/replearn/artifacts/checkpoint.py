"""Checkpoints: one torch.save dict per file, written atomically, loadable with weights_only=True.

Layout: {"model": state_dict, "config": Config dump (by alias), "classes": [train class names],
"iteration": int, "optimizer", "scheduler", "scaler": state_dicts, "rng": {"torch": [per-rank
CPU states], "cuda": [per-rank CUDA states]}, "metrics": {...}}. Everything in it is tensors and
plain Python values, so loading never needs to unpickle arbitrary objects.

torch is imported inside the functions: the torch-free stages import this package (threshold.json,
the ONNX metadata) and must not pull it in. Rebuilding the model from a checkpoint is training's
(training/model.py `load_model`), as only it knows the architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from replearn.atomic import atomic_path
from replearn.config import Config
from replearn.errors import UserError

if TYPE_CHECKING:
    import torch

CHECKPOINT_KEYS = frozenset({"model", "config", "classes"})


def checkpoint_payload(
    *,
    model: torch.nn.Module,
    config: Config,
    classes: list[str],
    iteration: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    rng_states: list[tuple[torch.Tensor, torch.Tensor | None]],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The checkpoint dict in the layout above; `rng_states` holds every rank's (CPU, CUDA or None) state."""
    return {
        "model": model.state_dict(),
        "config": config.model_dump(mode="json", by_alias=True),
        "classes": classes,
        "iteration": iteration,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": [cpu for cpu, _ in rng_states], "cuda": [gpu for _, gpu in rng_states if gpu is not None]},
        "metrics": metrics,
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, renamed into place only once complete."""
    import torch

    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def load_torch_dict(path: Path, what: str) -> dict[str, Any]:
    """The dict torch.save wrote to `path`, on the CPU and with weights_only; anything else is a UserError.

    `what` names the expected content in the message ("a replearn checkpoint", "a loadable state_dict").
    """
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} is not {what}: {error}") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path} holds a {type(payload).__name__}, not {what}")
    return payload


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """The checkpoint dict at `path` on the CPU; a missing or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; run `replearn train` first")
    payload = load_torch_dict(path, "a replearn checkpoint")
    if not payload.keys() >= CHECKPOINT_KEYS:
        raise UserError(f"{path} is not a replearn checkpoint (expected the keys model, config, classes)")
    return payload
