"""Checkpoints: one torch.save dict per file, written atomically, loadable with weights_only=True.

Layout: {"model": state_dict, "config": Config dump (by alias), "classes": [train class names],
"iteration": int, "optimizer", "scheduler", "scaler": state_dicts, "rng": {"torch": [per-rank
CPU states], "cuda": [per-rank CUDA states]}, "metrics": {...}}. Everything in it is tensors and
plain Python values, so loading never needs to unpickle arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from replearn.atomic import atomic_path
from replearn.config import Config, build_config
from replearn.errors import UserError
from replearn.training.model import EmbeddingModel, build_model


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
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """The checkpoint dict at `path` on the CPU; a missing or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; run `replearn train` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path} is not a replearn checkpoint: {error}") from None
    if not isinstance(payload, dict) or not {"model", "config", "classes"} <= payload.keys():
        raise UserError(f"{path} is not a replearn checkpoint (expected the keys model, config, classes)")
    return payload


def load_model(path: Path | str, device: str | torch.device = "cpu") -> tuple[EmbeddingModel, Config, list[str]]:
    """The trained model (eval mode, on `device`), the config it was trained with, and its class list.

    The backbone is rebuilt without its starting weights (they are in the state_dict anyway), so
    loading never needs the ImageNet file or the network.
    """
    payload = read_checkpoint(path)
    config = build_config(payload["config"], source=f"the config inside {path}")
    model_config = config.train.model.model_copy(deep=True)
    model_config.backbone.weights = "none"
    model = build_model(model_config)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), config, list(payload["classes"])
