"""The crontab entry for scheduled clustering, checked against a fake `crontab` that stores its table in a file."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

FAKE_CRONTAB = """#!/usr/bin/env bash
table="$FAKE_CRONTAB_FILE"
if [ "$1" = "-l" ]; then
  [ -f "$table" ] || { echo "no crontab for $USER" >&2; exit 1; }
  cat "$table"
elif [ "$1" = "-" ]; then
  cat > "$table"
fi
"""


def replearn(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replearn", *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "clustering.py").write_text("")
    return root


def environment(tmp_path: Path, with_cron: bool) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    env = dict(os.environ, FAKE_CRONTAB_FILE=str(tmp_path / "table"))
    if with_cron:
        script = bin_dir / "crontab"
        script.write_text(FAKE_CRONTAB)
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    env["PATH"] = f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin"
    return env


def test_install_is_idempotent_keeps_other_entries_and_remove_cleans_up(tmp_path: Path, repo: Path) -> None:
    env = environment(tmp_path, with_cron=True)
    table = tmp_path / "table"
    table.write_text("5 4 * * * backup.sh\n")
    for _ in range(2):
        result = replearn("schedule", "install", "--cron", "*/15 * * * *", env=env, cwd=repo)
        assert result.returncode == 0, result.stderr
    lines = table.read_text().splitlines()
    assert lines[0] == "5 4 * * * backup.sh"
    assert len(lines) == 2
    assert lines[1].startswith("*/15 * * * * cd ")
    assert "flock -n .zen/clustering.lock" in lines[1] and "pipeline run clustering" in lines[1]

    shown = replearn("schedule", "show", env=env, cwd=repo)
    assert shown.returncode == 0 and "installed" in shown.stderr

    removed = replearn("schedule", "remove", env=env, cwd=repo)
    assert removed.returncode == 0
    assert table.read_text().splitlines() == ["5 4 * * * backup.sh"]


def test_without_cron_show_prints_the_line_and_install_refuses(tmp_path: Path, repo: Path) -> None:
    env = environment(tmp_path, with_cron=False)
    shown = replearn("schedule", "show", env=env, cwd=repo)
    assert shown.returncode == 0
    assert "pipeline run clustering" in shown.stdout
    assert "crontab is not installed" in shown.stderr
    installed = replearn("schedule", "install", env=env, cwd=repo)
    assert installed.returncode == 1
    assert "nothing was installed" in installed.stderr
    assert not (tmp_path / "table").exists()


def test_bad_cron_and_wrong_folder_are_clear_errors(tmp_path: Path, repo: Path) -> None:
    env = environment(tmp_path, with_cron=True)
    bad = replearn("schedule", "show", "--cron", "every hour", env=env, cwd=repo)
    assert bad.returncode == 1 and "5 fields" in bad.stderr
    elsewhere = replearn("schedule", "show", env=env, cwd=tmp_path)
    assert elsewhere.returncode == 1 and "repository root" in elsewhere.stderr
