"""The evaluate stage: retrieval metrics, the pair threshold and the clustering calibration (evaluation/evaluate.py)."""

from __future__ import annotations

from pathlib import Path

from replearn.config import Config
from replearn.evaluation.evaluate import EvaluationResult, evaluate


def stage(config: Config, model: Path, preprocessed_dir: Path, out_dir: Path, force: bool = False) -> EvaluationResult:
    """A checkpoint or an ONNX model on the preprocessed folder's test splits; writes OUT_DIR whole."""
    return evaluate(config, Path(model), Path(preprocessed_dir), Path(out_dir), force=force)
