"""What both pipelines read before any step runs: the params file and the data it points at."""

from __future__ import annotations

from pathlib import Path

from replearn.config import Config, load_config
from replearn.errors import UserError

MODEL_NAME = "replearn"


def load_run_config(params_file: str, overrides: list[str] | None) -> Config:
    """params.yaml (the one file of values, shared with DVC) plus the run's overrides."""
    return load_config(params_file, list(overrides or []))


def require_data(raw_dir: Path) -> Path:
    """The class folders, or a message that says how to get some."""
    if not raw_dir.is_dir() or not any(raw_dir.iterdir()):
        raise UserError(
            f"no class folders in {raw_dir}: put your data there (one folder per class), "
            f"or run `make demo` / `replearn data chars {raw_dir}` for the demo data"
        )
    return raw_dir
