"""The evaluate stage: retrieval metrics, the pair threshold and the clustering calibration (evaluation/evaluate.py)."""

from __future__ import annotations

from pathlib import Path

from replearn.clustering.calibration import calibrate_clusters
from replearn.config import Config
from replearn.evaluation.evaluate import EvaluationResult, evaluate


def stage(config: Config, model: Path, preprocessed_dir: Path, out_dir: Path, force: bool = False) -> EvaluationResult:
    """A checkpoint or an ONNX model on the preprocessed folder's test splits; writes OUT_DIR whole.

    The cluster stage's threshold and resolution are calibrated by the cluster stage's own code.
    """
    return evaluate(config, Path(model), Path(preprocessed_dir), Path(out_dir), calibrate_clusters, force=force)
