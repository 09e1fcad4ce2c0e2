"""Shared fixtures. ZenML gets its own throwaway store before anything can import it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_ZENML_HOME = Path(tempfile.mkdtemp(prefix="replearn-tests-zenml-"))
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_CONFIG_PATH"] = str(_ZENML_HOME / "config")
os.environ["ZENML_REPOSITORY_PATH"] = str(_ZENML_HOME)
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    """`chars_dir` preprocessed at 32 px with the default split (fonts never straddle train and test)."""
    from replearn.config import load_config
    from replearn.data.preprocess import preprocess

    out = tmp_path_factory.mktemp("preprocessed") / "chars"
    preprocess(load_config(None, ["preprocess.resize.size=32"]), chars_dir, out)
    return out
