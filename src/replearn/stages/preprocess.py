"""The preprocess stage: resize DATA_DIR's images into OUT_DIR and write the splits (data/preprocess.py)."""

from __future__ import annotations

from pathlib import Path

from replearn.config import Config
from replearn.data.preprocess import PreprocessResult, preprocess


def stage(config: Config, data_dir: Path, out_dir: Path, only: Path | None = None) -> PreprocessResult:
    """Incremental resize and the seen/unseen train/val/test splits; `only` lists the files to keep (good_files.csv)."""
    return preprocess(config, Path(data_dir), Path(out_dir), only)
