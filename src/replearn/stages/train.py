"""The train stage: train the embedding model on a preprocessed folder into OUT_DIR (training/train.py)."""

from __future__ import annotations

from pathlib import Path

from replearn.config import Config
from replearn.training.loop import TrainResult
from replearn.training.train import train


def stage(
    config: Config, preprocessed_dir: Path, out_dir: Path, resume: bool = False, force: bool = False
) -> TrainResult:
    """Here, as one rank of a torchrun job, or as train.nproc_per_node local processes; rank 0's result."""
    return train(config, Path(preprocessed_dir), Path(out_dir), resume=resume, force=force)
