"""One training process: `train_process(config, preprocessed_dir, out_dir) -> TrainResult` (train.py launches it).

PK batches by iterations, Circle loss, SGD (or AdamW) with warm-up and cosine decay, gradient
clipping, optional autocast. Every `checkpoint_every` iterations rank 0 validates (precision@1 of
seen val queries against the seen train gallery), writes last.pt atomically and keeps best.pt.
A checkpoint holds everything the next step depends on (weights, optimizer, scheduler, scaler, RNG
states, iteration), and batches are pure functions of (seed, rank, iteration), so `resume=True`
continues bit-exactly on the CPU (GPU kernels are not all deterministic).
Outputs in OUT_DIR: last.pt, best.pt, metrics.csv, train_summary.json.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import TextColumn
from rich.table import Table
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from replearn.artifacts.checkpoint import checkpoint_payload, read_checkpoint, save_checkpoint
from replearn.atomic import write_json_atomic
from replearn.config import Config, TrainConfig
from replearn.console import make_progress, results_table
from replearn.data.preprocess import SUMMARY_FILE, read_summary
from replearn.data.splits import SPLITS_FILE, read_splits
from replearn.errors import UserError
from replearn.training.augment import build_augmentation
from replearn.training.data import PreprocessedImages
from replearn.training.datasets import PKBatchDataset
from replearn.training.distributed import (
    RankInfo,
    barrier,
    gather,
    gather_objects,
    gather_with_grad,
    process_group,
    select_device,
)
from replearn.training.iteration_plan import IterationPlan, plan_iterations
from replearn.training.loss import CircleLoss
from replearn.training.model import build_model
from replearn.training.run_state import MetricsLog, RunState, restore_rng, rng_state
from replearn.training.sampler import PKSampler, iteration_seed
from replearn.training.validation import capped_rows, embed_images, precision_at_1

log = logging.getLogger(__name__)

LAST, BEST, METRICS, SUMMARY = "last.pt", "best.pt", "metrics.csv", "train_summary.json"
# Keys that may change between a run and its resume: they decide how the work is done, not what is learned.
RESUMABLE_CHANGES = {
    "iterations",
    "checkpoint_every",
    "devices",
    "nproc_per_node",
    "loader_workers",
    "batch_size_eval",
    "val_max_images",
    "in_memory",
    "timeout_minutes",
    # They only choose the iteration count, which may change on resume.
    "class_draws",
    "min_iterations",
    "budget_minutes",
    "seconds_per_iteration",
}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainResult:
    """Where the outputs are and how the run ended."""

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    iterations: int
    best_val_precision_at_1: float
    summary: dict[str, Any]

    def __rich__(self) -> Table:
        summary = self.summary
        table = results_table(
            f"training run in {self.out_dir}",
            ("iterations", "minutes", "images/s", "final loss", "best val P@1", "best at"),
            (
                str(summary["iterations"]),
                f"{summary['seconds'] / 60:.1f}",
                f"{summary['images_per_second']:,.1f}",
                f"{summary['final_loss']:.4f}",
                f"{summary['best_val_precision_at_1']:.4f}",
                str(summary["best_iteration"]),
            ),
        )
        table.caption = f"iterations: {summary['iteration_reason']}"
        return table


@dataclass(frozen=True)
class TrainingData:
    """Seen train images (training set and validation gallery) and seen val images (validation queries)."""

    classes: list[str]
    train: PreprocessedImages
    val: PreprocessedImages


def read_training_data(preprocessed_dir: Path, in_memory: bool = True) -> TrainingData:
    """The seen train and val rows of the split table, decoded; labels index the sorted train classes."""
    table = read_splits(preprocessed_dir)
    seen = table[table["subset"] == "seen"]
    train_rows, val_rows = seen[seen["split"] == "train"], seen[seen["split"] == "val"]
    if train_rows.empty:
        raise UserError(f"{preprocessed_dir / SPLITS_FILE} has no seen train images to train on")
    classes = sorted(train_rows["label"].unique())
    val_rows = val_rows[val_rows["label"].isin(classes)]
    return TrainingData(
        classes=classes,
        train=PreprocessedImages(preprocessed_dir, train_rows, classes, in_memory=in_memory),
        val=PreprocessedImages(preprocessed_dir, val_rows, classes, in_memory=in_memory),
    )


def adopt_resize(config: Config, preprocessed_dir: Path) -> Config:
    """The config with preprocess.resize taken from the folder's preprocess.json, its single source.

    The images are already resized, so the folder decides the model's input, whatever the config
    passed in says (a ZenML step gets only the `train` section); the checkpoint records the adopted
    value, because export and inference resize new images by it. A difference is logged.
    """
    summary = read_summary(preprocessed_dir)
    if summary is None or summary.resize == config.preprocess.resize:
        return config
    log.info("using the resize settings of %s: %s", preprocessed_dir / SUMMARY_FILE, summary.resize.model_dump())
    adopted = config.model_copy(deep=True)
    adopted.preprocess.resize = summary.resize
    return adopted


def lr_factor(train_config: TrainConfig, total: int) -> Callable[[int], float]:
    """Linear warm-up to the base rate, then cosine decay to zero at the last of `total` iterations."""
    warmup = train_config.warmup_iterations

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: nn.Module, train_config: TrainConfig) -> torch.optim.Optimizer:
    if train_config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=train_config.lr, momentum=train_config.momentum, weight_decay=train_config.weight_decay
    )


def check_resumable(saved: dict[str, Any], config: Config, path: Path) -> None:
    """A resume must learn the same thing: only the keys in RESUMABLE_CHANGES may differ from the checkpoint."""
    current = config.model_dump(mode="json", by_alias=True)

    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    before = flat({"train": saved["train"], "preprocess": saved["preprocess"]})
    after = flat({"train": current["train"], "preprocess": current["preprocess"]})
    changed = [
        key
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key) and key.split(".")[1] not in RESUMABLE_CHANGES
    ]
    if changed:
        details = ", ".join(f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in changed)
        raise UserError(f"cannot resume from {path}: the config changed ({details}); start a new OUT_DIR instead")


def prepare_out_dir(out_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite an earlier run unless told; --force removes only the files training writes."""
    if resume:
        if not (out_dir / LAST).is_file():
            raise UserError(f"nothing to resume: {out_dir / LAST} does not exist")
        return
    if (out_dir / LAST).exists() and not force:
        raise UserError(f"{out_dir} already holds a training run; pass --resume to continue it or --force to restart")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The autocast precision to use: `precision` itself, or for auto the fastest one the device computes natively."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        # Before Ampere (compute capability 8), bf16 is emulated and slower than fp16 with a gradient scaler.
        native_bf16 = bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8
        return "bf16" if native_bf16 else "fp16"
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if native_bf16 else "fp32"


def train_process(
    config: Config, preprocessed_dir: Path, out_dir: Path, resume: bool = False, force: bool = False
) -> TrainResult:
    """One process's share of training: the whole job alone, or one rank of a distributed one."""
    preprocessed_dir, out_dir = Path(preprocessed_dir), Path(out_dir)
    ranks = RankInfo.from_env()
    cfg = config.train
    device = select_device(cfg.devices, ranks)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise UserError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if cfg.sync_batchnorm and ranks.world_size > 1 and device.type != "cuda":
        raise UserError("train.sync_batchnorm needs CUDA devices (PyTorch has no SyncBatchNorm on the CPU)")
    prepare_out_dir(out_dir, resume, force)
    config = adopt_resize(config, preprocessed_dir)
    data = read_training_data(preprocessed_dir, cfg.in_memory)
    plan = plan_iterations(cfg, len(data.classes), ranks.world_size)
    if ranks.is_main:
        log.info("training for %d iterations: %s", plan.iterations, plan.reason)
    config = config.model_copy(deep=True)
    config.train.iterations = plan.iterations
    with process_group(ranks, device, cfg.timeout_minutes):
        return _run(config, data, out_dir, resume, ranks, device, plan)


@dataclass
class Trainer:
    """The model and what updates it, built in the order that fixes every RNG draw."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    precision: str


def build_trainer(cfg: TrainConfig, iterations: int, ranks: RankInfo, device: torch.device) -> Trainer:
    """Model (seeded), optimiser, schedule and gradient scaler; then this rank's dropout stream is seeded."""
    torch.manual_seed(cfg.seed)
    model: nn.Module = build_model(cfg.model).to(device)
    if cfg.sync_batchnorm and ranks.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, iterations))
    precision = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    # Dropout draws from the global RNG: one stream per rank, restored on resume.
    torch.manual_seed(iteration_seed(cfg.seed, ranks.rank, 0, stream=2))
    return Trainer(model, optimizer, scheduler, scaler, precision)


def resume_from(path: Path, trainer: Trainer, config: Config, ranks: RankInfo, device: torch.device) -> RunState:
    """Load last.pt into the trainer and restore this rank's RNG streams; the loop's state to go on from."""
    cfg = config.train
    saved = read_checkpoint(path)
    check_resumable(saved["config"], config, path)
    trainer.model.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    if saved["scaler"]:  # empty when the run so far had no fp16 (precision auto resolves per device)
        trainer.scaler.load_state_dict(saved["scaler"])
    state = RunState.from_checkpoint(saved)
    restore_rng(saved["rng"], ranks.rank, device, iteration_seed(cfg.seed, ranks.rank, state.start, stream=2))
    if ranks.is_main:
        log.info("resuming %s at iteration %d of %d", path.parent, state.start, cfg.iterations)
    return state


def batch_loader(
    config: Config, data: TrainingData, ranks: RankInfo, device: torch.device, start: int, stop: int
) -> tuple[DataLoader, int]:
    """This rank's augmented PK batches of iterations `start` to `stop`, and the global batch size."""
    cfg = config.train
    sampler = PKSampler(data.train.labels, cfg.classes_per_batch, cfg.images_per_class, cfg.seed, ranks.rank)
    augment = build_augmentation(cfg.augmentations, config.preprocess.resize.size)
    loader = DataLoader(
        PKBatchDataset(data.train, sampler, augment),
        sampler=range(start, stop),
        batch_size=None,
        num_workers=cfg.loader_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # its own seed source: creating the loader must not consume the global RNG
    )
    return loader, sampler.batch_size * ranks.world_size


def train_step(
    trainer: Trainer,
    trained: nn.Module,
    loss_fn: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[float, float, float]:
    """One optimiser step on one batch: (loss, the learning rate it used, the gradient norm before clipping)."""
    images, labels = batch
    loss = batch_loss(trained, loss_fn, images, labels, device, _DTYPES.get(trainer.precision))
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.unscale_(trainer.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), cfg.grad_clip or math.inf))
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    lr = trainer.optimizer.param_groups[0]["lr"]
    trainer.scheduler.step()
    return float(loss.detach()), lr, grad_norm


def save_checkpoints(
    out_dir: Path,
    trainer: Trainer,
    config: Config,
    data: TrainingData,
    state: RunState,
    row: dict[str, float],
    rng_states: list[tuple[torch.Tensor, torch.Tensor | None]],
) -> None:
    """last.pt, and best.pt when this iteration validated best (rank 0 only)."""
    iteration = int(row["iteration"])
    payload = checkpoint_payload(
        model=trainer.model,
        config=config,
        classes=data.classes,
        iteration=iteration,
        optimizer=trainer.optimizer,
        scheduler=trainer.scheduler,
        scaler=trainer.scaler,
        rng_states=rng_states,
        metrics=state.metrics(row["elapsed_seconds"]),
    )
    save_checkpoint(out_dir / LAST, payload)
    if state.best_iteration == iteration:
        save_checkpoint(out_dir / BEST, payload)
    log.info(
        "iteration %d/%d: loss %.4f, val precision@1 %.4f (best %.4f at %d)",
        iteration,
        config.train.iterations,
        state.loss,
        state.val,
        state.best,
        state.best_iteration,
    )


def _run(
    config: Config,
    data: TrainingData,
    out_dir: Path,
    resume: bool,
    ranks: RankInfo,
    device: torch.device,
    plan: IterationPlan,
) -> TrainResult:
    cfg = config.train
    iterations = plan.iterations
    trainer = build_trainer(cfg, iterations, ranks, device)
    state = resume_from(out_dir / LAST, trainer, config, ranks, device) if resume else RunState()
    if state.start >= iterations:
        raise UserError(f"{out_dir / LAST} is already at iteration {state.start} of train.iterations={iterations}")
    trained = (
        DistributedDataParallel(trainer.model, device_ids=[device.index] if device.type == "cuda" else None)
        if ranks.world_size > 1
        else trainer.model
    )
    loader, global_batch = batch_loader(config, data, ranks, device, state.start, iterations)
    loss_fn = CircleLoss(cfg.loss.margin, cfg.loss.gamma)
    log_file = MetricsLog(out_dir / METRICS, keep_until=state.start if resume else None, enabled=ranks.is_main)
    if ranks.is_main and not resume:
        (out_dir / BEST).unlink(missing_ok=True)
    progress = make_progress(TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}"), show=ranks.is_main)
    started = time.perf_counter()
    with progress, log_file:
        task = progress.add_task("training", total=iterations, completed=state.start, unit="it", loss=0.0, lr=0.0)
        step_started = time.perf_counter()
        for index, batch in enumerate(loader, start=state.start):
            state.loss, lr, grad_norm = train_step(trainer, trained, loss_fn, batch, cfg, device)
            iteration = index + 1
            now = time.perf_counter()
            row = {
                "iteration": iteration,
                "loss": state.loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "images_per_second": global_batch / max(now - step_started, 1e-9),
                "elapsed_seconds": state.elapsed_before + now - started,
            }
            checkpoint_due = iteration % cfg.checkpoint_every == 0 or iteration == iterations
            rng_states = gather_objects(rng_state(device)) if checkpoint_due else []
            if checkpoint_due and ranks.is_main:
                row["val_precision_at_1"] = state.record_validation(
                    validate(trainer.model, data, cfg, device), iteration
                )
            # The row goes out before the checkpoint, so every iteration a checkpoint covers has its row.
            log_file.write(row)
            if checkpoint_due:
                if ranks.is_main:
                    save_checkpoints(out_dir, trainer, config, data, state, row, rng_states)
                barrier()
                now = time.perf_counter()
            progress.update(task, advance=1, loss=state.loss, lr=lr)
            step_started = now
    seconds = time.perf_counter() - started
    summary = train_summary(config, data, plan, state, resume, seconds, global_batch, device, ranks, trainer.precision)
    if ranks.is_main:
        write_json_atomic(out_dir / SUMMARY, summary)
    barrier()
    return TrainResult(out_dir, out_dir / LAST, out_dir / BEST, iterations, state.best, summary)


def train_summary(
    config: Config,
    data: TrainingData,
    plan: IterationPlan,
    state: RunState,
    resume: bool,
    seconds: float,
    global_batch: int,
    device: torch.device,
    ranks: RankInfo,
    precision: str,
) -> dict[str, Any]:
    """train_summary.json: how long, how fast, how well, on what, and why it trained for so many iterations."""
    trained = plan.iterations - state.start
    return {
        "iterations": plan.iterations,
        "iteration_rule": plan.rule,
        "iteration_reason": plan.reason,
        "resumed_from": state.start if resume else None,
        "seconds": state.elapsed_before + seconds,
        "images_per_second": trained * global_batch / seconds,
        "seconds_per_iteration": seconds / max(1, trained),
        "final_loss": state.loss,
        "final_val_precision_at_1": state.val,
        "best_val_precision_at_1": state.best,
        "best_iteration": state.best_iteration,
        "device": str(device),
        "world_size": ranks.world_size,
        "precision": precision,
        "global_batch_size": global_batch,
        "classes": len(data.classes),
        "train_images": len(data.train),
        "val_images": len(data.val),
    }


def batch_loss(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Embed this rank's batch and return the loss over the global batch.

    The embeddings of all ranks are gathered with their gradients, so the loss (the same on every
    rank) is the single-process loss over the concatenated batch; DDP's gradient averaging then
    gives exactly the single-process gradient.
    """
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        embeddings = model(images.to(device, non_blocking=True))
    return loss_fn(gather_with_grad(embeddings.float()), gather(labels.to(device, non_blocking=True)))


def validate(model: nn.Module, data: TrainingData, cfg: TrainConfig, device: torch.device) -> float:
    """Precision@1 of the seen val images against the seen train gallery (nan when there is no val split).

    At most `val_max_images` of each: the other DDP ranks wait at a barrier meanwhile, so on a large
    dataset the whole gallery would cost minutes every checkpoint and could trip train.timeout_minutes.
    """
    if len(data.val) == 0:
        return float("nan")
    gallery_rows = capped_rows(len(data.train), cfg.val_max_images)
    query_rows = capped_rows(len(data.val), cfg.val_max_images)
    gallery = embed_images(model, data.train, cfg.batch_size_eval, device, gallery_rows)
    queries = embed_images(model, data.val, cfg.batch_size_eval, device, query_rows)
    return precision_at_1(queries, data.val.labels[query_rows], gallery, data.train.labels[gallery_rows])
