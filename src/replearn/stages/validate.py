"""The validate stage: check the class folders of DATA_DIR and write the report to OUT_DIR (data/validation.py)."""

from __future__ import annotations

from pathlib import Path

from replearn.config import Config
from replearn.data.validation import ValidationResult, validate_dataset


def stage(config: Config, data_dir: Path, out_dir: Path) -> ValidationResult:
    """Manifest, Great Expectations suite, Data Docs, good and bad files; validate.on_error decides the verdict."""
    return validate_dataset(config, Path(data_dir), Path(out_dir))
