"""The export stage: a checkpoint to a parity-checked ONNX file with its metadata (export/onnx_export.py).

The files are read here (the checkpoint, the parity images, preprocess.json's data version and
whether the data is wide, evaluation's threshold.json), so export_model itself takes values.
"""

from __future__ import annotations

from pathlib import Path

from replearn.artifacts.threshold import NOT_CALIBRATED, Calibration, read_calibration
from replearn.config import Config
from replearn.data.preprocess import read_summary
from replearn.errors import UserError
from replearn.export.onnx_export import ExportResult, describe_data, export_model, load_parity_batch


def stage(
    config: Config,
    checkpoint: Path,
    out_path: Path,
    images_dir: Path | None = None,
    threshold_file: Path | None = None,
    calibration: Calibration | None = None,
    data_version: str | None = None,
) -> ExportResult:
    """Export with the calibration in `threshold_file`, or with the one given (none: the metadata has no threshold).

    images_dir: real images for the parity batch; a preprocessed folder also gives the data version.
    """
    from replearn.training.model import load_model

    if threshold_file is not None and calibration is not None:
        raise UserError("give the threshold or a threshold file, not both")
    model, train_config, classes = load_model(checkpoint, device="cpu")
    images_dir = None if images_dir is None else Path(images_dir)
    summary = read_summary(images_dir) if images_dir is not None else None
    return export_model(
        config.export,
        model,
        train_config,
        classes,
        Path(out_path),
        load_parity_batch(images_dir, train_config.preprocess.resize, config.export.parity_images),
        describe_data(summary, data_version),
        read_calibration(threshold_file) if threshold_file is not None else calibration or NOT_CALIBRATED,
        summary.wide if summary is not None else None,
    )
