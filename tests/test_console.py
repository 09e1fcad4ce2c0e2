"""Progress where nobody watches a terminal (DVC, ZenML, cron): log lines instead of a bar."""

import logging
import subprocess
import sys

import pytest
from rich.console import Console

from replearn import console as console_module
from replearn.console import make_progress, track


@pytest.fixture
def every_update(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """No terminal (pytest captures stderr) and no minute to wait: every update may log."""
    monkeypatch.setattr(console_module, "console", Console(stderr=True, force_terminal=False))
    monkeypatch.setattr(console_module, "PROGRESS_LOG_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="replearn.console")
    return caplog


def test_long_work_logs_its_progress_where_no_bar_shows(every_update: pytest.LogCaptureFixture) -> None:
    assert list(track(range(3), 3, "hashing")) == [0, 1, 2]
    assert "hashing: 3/3 (100%)" in every_update.text
    with make_progress() as progress:
        task = progress.add_task("training", total=10, unit="it", loss=0.0)
        progress.update(task, advance=3, loss=4.25)
    assert "training: 3/10 (30%)" in every_update.text and "loss 4.25" in every_update.text


def test_a_hidden_progress_says_nothing(every_update: pytest.LogCaptureFixture) -> None:
    with make_progress(show=False) as progress:  # the other DDP ranks
        task = progress.add_task("training", total=10, unit="it")
        progress.advance(task, 5)
    assert every_update.text == ""


def test_faiss_loader_misses_are_not_shown() -> None:
    """faiss logs every CPU-specific build it fails to load at INFO; after replearn is imported, it does not."""
    script = "import logging; logging.basicConfig(level=logging.INFO); import replearn, faiss; faiss.IndexFlatIP(2)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "Could not load library" not in result.stderr and "Loading faiss" not in result.stderr
