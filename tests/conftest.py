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
    """A preprocessed-folder stand-in (images/ + splits.csv) from `chars_dir`, split by hand for training tests.

    Every 5th class is unseen; file n of a class goes to test (n = 7), val (n = 6) or train.
    """
    import shutil

    import pandas as pd

    out = tmp_path_factory.mktemp("preprocessed")
    rows = []
    for index, class_dir in enumerate(sorted(p for p in chars_dir.iterdir() if p.is_dir())):
        for file in sorted(class_dir.iterdir()):
            n = int(file.stem.rsplit("_", 1)[1])
            target = out / "images" / class_dir.name / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
            rows.append(
                {
                    "path": target.relative_to(out).as_posix(),
                    "label": class_dir.name,
                    "split": "test" if n == 7 else "val" if n == 6 else "train",
                    "subset": "unseen" if index % 5 == 0 else "seen",
                    "group": file.stem.rsplit("_", 1)[0],
                    "source": f"{class_dir.name}/{file.name}",
                    "sha256": "",
                }
            )
    pd.DataFrame(rows).to_csv(out / "splits.csv", index=False)
    return out
