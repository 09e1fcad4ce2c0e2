"""The export stage: a checkpoint to a parity-checked ONNX file with its metadata (export/onnx_export.py).

The calibrated values come from evaluation's threshold.json here, so export_model itself takes values.
"""

from __future__ import annotations

from pathlib import Path

from replearn.artifacts.threshold import read_calibrated, read_threshold
from replearn.config import Config
from replearn.errors import UserError
from replearn.export.onnx_export import ExportResult, export_model


def stage(
    config: Config,
    checkpoint: Path,
    out_path: Path,
    images_dir: Path | None = None,
    threshold_file: Path | None = None,
    threshold: float | None = None,
    resolution: float | None = None,
    cluster_threshold: float | None = None,
    data_version: str | None = None,
) -> ExportResult:
    """Export with the threshold, resolution and cluster threshold of `threshold_file`, or with the values given."""
    if threshold_file is not None:
        if (threshold, resolution, cluster_threshold) != (None, None, None):
            raise UserError("give the threshold or a threshold file, not both")
        threshold = read_threshold(threshold_file)
        resolution = read_calibrated(threshold_file, "resolution")
        cluster_threshold = read_calibrated(threshold_file, "cluster_threshold")
    return export_model(
        config.export,
        Path(checkpoint),
        Path(out_path),
        images_dir=None if images_dir is None else Path(images_dir),
        data_version=data_version,
        threshold=threshold,
        resolution=resolution,
        cluster_threshold=cluster_threshold,
    )
