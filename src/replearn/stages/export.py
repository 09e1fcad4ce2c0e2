"""The export stage: a checkpoint to a parity-checked ONNX file with its metadata (export/onnx_export.py).

The calibrated values come from evaluation's threshold.json here, so export_model itself takes values.
"""

from __future__ import annotations

from pathlib import Path

from replearn.artifacts.threshold import NOT_CALIBRATED, Calibration, read_calibration
from replearn.config import Config
from replearn.errors import UserError
from replearn.export.onnx_export import ExportResult, export_model


def stage(
    config: Config,
    checkpoint: Path,
    out_path: Path,
    images_dir: Path | None = None,
    threshold_file: Path | None = None,
    calibration: Calibration | None = None,
    data_version: str | None = None,
) -> ExportResult:
    """Export with the calibration in `threshold_file`, or with the one given (none: the metadata has no threshold)."""
    if threshold_file is not None and calibration is not None:
        raise UserError("give the threshold or a threshold file, not both")
    return export_model(
        config.export,
        Path(checkpoint),
        Path(out_path),
        images_dir=None if images_dir is None else Path(images_dir),
        data_version=data_version,
        calibration=read_calibration(threshold_file) if threshold_file is not None else calibration or NOT_CALIBRATED,
    )
