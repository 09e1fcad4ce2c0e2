"""threshold.json: how the calibrated clustering threshold travels from evaluation to export and `compare`.

It also carries the cluster stage's own threshold and Louvain resolution, calibrated together at or
below it, which export stores in the model's metadata.

A small JSON file rather than a pickle, so export (which copies it into the ONNX metadata), the
clustering stage and a person reading the evaluation folder all see the same number and where it
came from. This module needs only the standard library, so a torch-free image can read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replearn.atomic import write_json_atomic
from replearn.errors import UserError

THRESHOLD_FILE = "threshold.json"
OPTIONAL = ("resolution", "cluster_threshold")  # keys that files older than them lack


@dataclass(frozen=True)
class Calibration:
    """What evaluation calibrated and the model's metadata carries; None where nothing was calibrated."""

    threshold: float | None = None  # pairwise same-class threshold (`compare`, the components method)
    resolution: float | None = None  # Louvain resolution of the cluster stage
    cluster_threshold: float | None = None  # the cluster stage's edge threshold, calibrated with the resolution


NOT_CALIBRATED = Calibration()


def write_threshold(path: Path, threshold: float, **details: Any) -> None:
    """Write {"threshold": t, ...details} atomically; details say how t was chosen and how well it did."""
    write_json_atomic(path, {"threshold": float(threshold), **details})


def _read_record(path: Path | str) -> tuple[Path, Any]:
    """The file a threshold.json path names (the file, or the evaluation folder holding it) and its parsed JSON.

    A missing or unparsable file is a UserError naming it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / THRESHOLD_FILE
    if not path.is_file():
        raise UserError(f"threshold file {path} does not exist; run `replearn evaluate` first")
    try:
        return path, json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"{path} does not hold a numeric 'threshold': {error}") from None


def _checked_threshold(path: Path, record: Any) -> float:
    """The record's threshold; a missing one or a value outside [-1, 1] is a UserError naming the file."""
    try:
        value = float(record["threshold"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} does not hold a numeric 'threshold': {error}") from None
    if not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise UserError(f"{path}: threshold {value} is not a cosine similarity in [-1, 1]")
    return value


def read_threshold(path: Path | str) -> float:
    """The threshold in a threshold.json (or in the evaluation folder that holds one)."""
    return _checked_threshold(*_read_record(path))


def read_calibration(path: Path | str) -> Calibration:
    """Everything a threshold.json (or the evaluation folder that holds one) calibrated, read once.

    resolution and cluster_threshold are optional: files older than them give None.
    """
    path, record = _read_record(path)
    threshold = _checked_threshold(path, record)
    resolution, cluster_threshold = (None if record.get(key) is None else float(record[key]) for key in OPTIONAL)
    return Calibration(threshold, resolution, cluster_threshold)
