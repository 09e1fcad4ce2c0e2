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


@dataclass(frozen=True)
class Calibration:
    """What evaluation calibrated and the model's metadata carries; None where nothing was calibrated."""

    threshold: float | None = None  # pairwise same-class threshold (`compare`, the components method)
    resolution: float | None = None  # Louvain resolution of the cluster stage
    cluster_threshold: float | None = None  # the cluster stage's edge threshold, calibrated with the resolution


NOT_CALIBRATED = Calibration()


def read_calibrated(path: Path | str, key: str) -> float | None:
    """An optional value of a threshold.json (or its folder), such as "resolution"; older files give None."""
    path = Path(path)
    path = path / THRESHOLD_FILE if path.is_dir() else path
    value = (json.loads(path.read_text()) if path.is_file() else {}).get(key)
    return None if value is None else float(value)


def write_threshold(path: Path, threshold: float, **details: Any) -> None:
    """Write {"threshold": t, ...details} atomically; details say how t was chosen and how well it did."""
    write_json_atomic(path, {"threshold": float(threshold), **details})


def read_threshold(path: Path | str) -> float:
    """The threshold in a threshold.json (or in the evaluation folder that holds one).

    A missing file or a value outside [-1, 1] is a UserError naming the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / THRESHOLD_FILE
    if not path.is_file():
        raise UserError(f"threshold file {path} does not exist; run `replearn evaluate` first")
    try:
        value = float(json.loads(path.read_text())["threshold"])
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} does not hold a numeric 'threshold': {error}") from None
    if not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise UserError(f"{path}: threshold {value} is not a cosine similarity in [-1, 1]")
    return value


def read_calibration(path: Path | str) -> Calibration:
    """Everything a threshold.json (or the evaluation folder that holds one) calibrated."""
    return Calibration(
        read_threshold(path), read_calibrated(path, "resolution"), read_calibrated(path, "cluster_threshold")
    )
