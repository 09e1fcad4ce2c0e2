"""Shared fixtures. ZenML gets its own throwaway store before anything can import it."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from replearn.export.onnx_export import ExportResult

_ZENML_HOME = Path(tempfile.mkdtemp(prefix="replearn-tests-zenml-"))
# The store fills with model artifacts (hundreds of MB per run): leaving it behind fills the disk over repeated runs.
atexit.register(shutil.rmtree, _ZENML_HOME, ignore_errors=True)
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_CONFIG_PATH"] = str(_ZENML_HOME / "config")
os.environ["ZENML_REPOSITORY_PATH"] = str(_ZENML_HOME)
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Nothing in the suite reaches beyond the machine: `weights: imagenet` never downloads here. The download
# tests (test_backbones.py) lift this for a server on 127.0.0.1.
os.environ["REPLEARN_OFFLINE"] = "1"
# FiftyOne (tests/test_fiftyone.py) gets its own throwaway database, config and folders the same way, before
# it is imported, so the tests never read or write ~/.fiftyone nor a MongoDB server a user's settings name.
_FIFTYONE_HOME = Path(tempfile.mkdtemp(prefix="replearn-tests-fiftyone-"))
atexit.register(shutil.rmtree, _FIFTYONE_HOME, ignore_errors=True)
os.environ.pop("FIFTYONE_DATABASE_URI", None)
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
for _name in ["DATABASE", "DEFAULT_DATASET", "DATASET_ZOO", "MODEL_ZOO", "PLUGINS"]:
    os.environ[f"FIFTYONE_{_name}_DIR"] = str(_FIFTYONE_HOME / _name.lower())
for _name in ["", "APP_", "ANNOTATION_", "EVALUATION_"]:
    os.environ[f"FIFTYONE_{_name}CONFIG_PATH"] = str(_FIFTYONE_HOME / f"{_name.lower()}config.json")

REPO_ROOT = Path(__file__).resolve().parents[1]


def missing_gpu(devices: int, onnxruntime: bool) -> str | None:
    """Why a test needing `devices` CUDA devices (and onnxruntime's CUDA provider) cannot run here; None if it can."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0:
        return "no CUDA device: torch.cuda.is_available() is false"
    if visible < devices:
        return f"needs {devices} CUDA devices, {visible} visible"
    if onnxruntime:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (a CPU build, not onnxruntime-gpu)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.gpu(devices=N, onnxruntime=True)` tests skip, with the reason, where that hardware is missing."""
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue
        reason = missing_gpu(marker.kwargs.get("devices", 1), marker.kwargs.get("onnxruntime", False))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def chars_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small chars dataset (62 classes x 8 images, 32 px), built once per test session."""
    from replearn.data.chars import generate_chars

    out = tmp_path_factory.mktemp("chars") / "raw"
    generate_chars(out, per_class=8, size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_preprocessed(chars_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`chars_dir` preprocessed at 32 px with the default split (typeface families never straddle train and test)."""
    from replearn.config import load_config
    from replearn.data.preprocess import preprocess

    out = tmp_path_factory.mktemp("preprocessed") / "chars"
    preprocess(load_config(None, ["preprocess.resize.size=32"]), chars_dir, out)
    return out


EXPORT_OVERRIDES = [
    "preprocess.resize.size=32",
    "train.model.d_model=16",
    "train.model.heads=2",
    "train.model.layers=1",
    "train.model.embedding_dim=8",
    "export.quantize=int8",
    "export.fp16=true",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model (32 px, 8-dim) in the training checkpoint format."""
    import torch

    from replearn.artifacts.checkpoint import save_checkpoint
    from replearn.config import load_config
    from replearn.training.model import build_model

    config = load_config(None, EXPORT_OVERRIDES)
    torch.manual_seed(0)
    model = build_model(config.train.model)
    path = tmp_path_factory.mktemp("checkpoint") / "best.pt"
    classes = ["digit_0", "upper_A", "lower_a"]
    save_checkpoint(
        path, {"model": model.state_dict(), "config": config.model_dump(mode="json", by_alias=True), "classes": classes}
    )
    return path


@pytest.fixture(scope="session")
def tiny_export(
    tiny_checkpoint: Path, tiny_preprocessed: Path, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    """`tiny_checkpoint` through the real export stage, with a threshold and the int8 and fp16 variants."""
    from replearn.config import load_config
    from replearn.stages.export import stage

    out = tmp_path_factory.mktemp("onnx")
    (out / "threshold.json").write_text('{"threshold": 0.42}')
    config = load_config(None, EXPORT_OVERRIDES)
    return stage(config, tiny_checkpoint, out / "model.onnx", tiny_preprocessed, out / "threshold.json")
