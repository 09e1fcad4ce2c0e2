"""The run status record of scheduled clustering, and `replearn cluster`'s exit codes for cron without ZenML."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replearn.cli import NOTHING_NEW_EXIT_CODE, app
from replearn.clustering.run_status import STATUS_FILE, read_run_status, record_failure, record_success
from replearn.errors import UserError

runner = CliRunner()


def replearn(*args: str) -> subprocess.CompletedProcess[str]:
    """The console script's path (`run()`: user errors exit 1 without a traceback), as cron calls it."""
    return subprocess.run([sys.executable, "-m", "replearn", *args], capture_output=True, text=True)


def test_failures_count_until_a_good_run_and_the_record_keeps_the_last_of_each(tmp_path: Path) -> None:
    assert read_run_status(tmp_path) == read_run_status(tmp_path / "missing")  # empty before any run
    record_success(tmp_path, images=40, new_images=12, run=1, at="2025-01-01T00:00:00Z")
    record_failure(tmp_path, OSError(5, "Input/output error"), step="cluster", at="2025-01-01T01:00:00Z")
    status = record_failure(tmp_path, UserError("inbox is gone\nsecond line"), at="2025-01-01T02:00:00Z")
    assert status.consecutive_failures == 2
    assert status.last_failure is not None and status.last_failure.reason == "inbox is gone"
    assert status.last_success is not None and status.last_success.run == 1
    assert read_run_status(tmp_path) == status

    good = record_success(tmp_path, images=40, new_images=0, run=None, at="2025-01-01T03:00:00Z")
    assert good.consecutive_failures == 0 and good.last_failure == status.last_failure
    record = json.loads((tmp_path / STATUS_FILE).read_text())
    assert record["last_success"] == {"at": "2025-01-01T03:00:00Z", "images": 40, "new_images": 0, "run": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{STATUS_FILE}.lock", STATUS_FILE]  # no temporary left


def test_a_long_reason_is_one_shortened_line(tmp_path: Path) -> None:
    status = record_failure(tmp_path, RuntimeError("x" * 1000 + "\nmore"))
    assert status.last_failure is not None
    reason = status.last_failure.reason
    assert reason.startswith("RuntimeError: xxx") and "\n" not in reason and len(reason) == 300


def test_a_damaged_record_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / STATUS_FILE).write_text("{not json")
    with pytest.raises(UserError, match="delete it"):
        read_run_status(tmp_path)


def test_cluster_exit_codes_and_status_without_zenml(tmp_path: Path) -> None:
    """Nothing new exits 0 (3 with --detailed-exit-code); a failure exits 1; `clusters status` shows both."""
    out, inbox = tmp_path / "out", tmp_path / "inbox"
    inbox.mkdir()
    model = tmp_path / "model.onnx"  # not read while the inbox holds nothing new
    quiet = runner.invoke(app, ["cluster", str(model), str(inbox), str(out)])
    assert quiet.exit_code == 0, quiet.output
    detailed = runner.invoke(app, ["cluster", str(model), str(inbox), str(out), "--detailed-exit-code"])
    assert detailed.exit_code == NOTHING_NEW_EXIT_CODE == 3

    (inbox / "a.png").write_bytes(b"\x89PNG")  # something new, and a model that does not exist: the run fails
    for _ in range(2):
        failed = replearn("cluster", str(model), str(inbox), str(out), "--detailed-exit-code")
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    status = read_run_status(out)
    assert status.consecutive_failures == 2 and status.last_success is not None
    assert status.last_failure is not None and str(model) in status.last_failure.reason

    shown = runner.invoke(app, ["clusters", "status", str(out)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].startswith("last good run:") and "nothing new among 0 images" in lines[0]
    assert lines[1].startswith("last failure:") and "model.onnx" in shown.output
    assert lines[-1] == "consecutive failures: 2"


def test_status_of_a_folder_without_a_record_says_so(tmp_path: Path) -> None:
    result = replearn("clusters", "status", str(tmp_path))
    assert result.returncode == 1 and "no run has recorded its status" in result.stderr
