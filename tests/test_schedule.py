"""`python pipelines/schedule.py`: the crontab entry for scheduled clustering, against a fake `crontab` that stores
its table in a file."""

import importlib.util
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

FAKE_CRONTAB = """#!/usr/bin/env bash
table="$FAKE_CRONTAB_FILE"
if [ "$1" = "-l" ]; then
  [ -f "$table" ] || { echo "no crontab for $USER" >&2; exit 1; }
  cat "$table"
elif [ "$1" = "-" ]; then
  cat > "$table"
fi
"""


def schedule(*args: str, env: dict[str, str], repo_root: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(repo_root / "pipelines" / "schedule.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo_root)


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


def test_install_is_idempotent_keeps_other_entries_and_remove_cleans_up(tmp_path: Path, repo_root: Path) -> None:
    env = environment(tmp_path, with_cron=True)
    table = tmp_path / "table"
    table.write_text("5 4 * * * backup.sh\n")
    for _ in range(2):
        result = schedule("install", "--cron", "*/15 * * * *", env=env, repo_root=repo_root)
        assert result.returncode == 0, result.stderr
    lines = table.read_text().splitlines()
    assert lines[0] == "5 4 * * * backup.sh"
    assert len(lines) == 2
    assert lines[1].startswith("*/15 * * * * cd ")
    assert "flock -n .zen/clustering.lock" in lines[1] and "pipeline run clustering" in lines[1]

    shown = schedule("show", env=env, repo_root=repo_root)
    assert shown.returncode == 0 and "installed" in shown.stderr

    removed = schedule("remove", env=env, repo_root=repo_root)
    assert removed.returncode == 0
    assert table.read_text().splitlines() == ["5 4 * * * backup.sh"]


def test_without_cron_show_prints_the_line_and_install_refuses(tmp_path: Path, repo_root: Path) -> None:
    env = environment(tmp_path, with_cron=False)
    shown = schedule("show", env=env, repo_root=repo_root)
    assert shown.returncode == 0
    assert "pipeline run clustering" in shown.stdout
    assert "crontab is not installed" in shown.stderr
    installed = schedule("install", env=env, repo_root=repo_root)
    assert installed.returncode == 1
    assert "nothing was installed" in installed.stderr
    assert not (tmp_path / "table").exists()


def test_bad_cron_is_a_clear_error(tmp_path: Path, repo_root: Path) -> None:
    bad = schedule("show", "--cron", "every hour", env=environment(tmp_path, with_cron=True), repo_root=repo_root)
    assert bad.returncode == 1 and "5 fields" in bad.stderr and "Traceback" not in bad.stderr


def test_the_entry_runs_in_this_repository_and_is_found_by_its_tag(tmp_path: Path, repo_root: Path) -> None:
    """The line cds into the checkout that holds pipelines/, and install replaces an entry of the old format."""
    env = environment(tmp_path, with_cron=True)
    table = tmp_path / "table"
    table.write_text(f"0 * * * * old command # replearn scheduled clustering {repo_root}\n")
    assert schedule("install", env=env, repo_root=repo_root).returncode == 0
    (line,) = table.read_text().splitlines()
    assert line.startswith(f"0 * * * * cd {repo_root} && ")


def test_the_default_schedule_is_the_repositorys_whatever_the_working_folder(tmp_path: Path, repo_root: Path) -> None:
    """Cron runs the pipeline with the repository's params.yaml, so its schedule.cron is the default."""
    (tmp_path / "params.yaml").write_text("schedule:\n  cron: '5 5 * * *'\n")
    command = [sys.executable, str(repo_root / "pipelines" / "schedule.py"), "show"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment(tmp_path, False), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not result.stdout.startswith("5 5 * * *") and f"cd {repo_root} && " in result.stdout


def load_schedule_script(repo_root: Path) -> ModuleType:
    """pipelines/schedule.py as cron's installer runs it: a script, without the pipelines package (and ZenML)."""
    spec = importlib.util.spec_from_file_location("schedule_script", repo_root / "pipelines" / "schedule.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cron_command_keeps_its_log_bounded(tmp_path: Path, repo_root: Path) -> None:
    """The crontab line itself, run by /bin/sh with cron's PATH and a stand-in zenml that logs 60 bytes a run."""
    schedule = load_schedule_script(repo_root)
    fake_zenml = tmp_path / "bin" / "zenml"
    fake_zenml.parent.mkdir()
    fake_zenml.write_text("#!/bin/sh\nprintf '%059d\\n' 0\n")
    fake_zenml.chmod(0o755)
    repo = tmp_path / "repo"
    (repo / ".zen").mkdir(parents=True)
    command = schedule.clustering_command(repo, log_max_bytes=100)
    assert "%" not in command  # cron turns % into a newline
    command = command.replace(shlex.quote(str(Path(sys.executable).with_name("zenml"))), str(fake_zenml))
    logs = repo / "outputs" / "logs"
    for _ in range(7):
        subprocess.run(["/bin/sh", "-c", command], check=True, env={"PATH": "/usr/bin:/bin"})
    assert sorted(p.name for p in logs.iterdir()) == ["clustering.log", "clustering.log.1"]
    assert all(path.stat().st_size <= 100 + 60 for path in logs.iterdir())
    assert (logs / "clustering.log").read_text().count("\n") == 1  # 7 runs: rotated after the 2nd, 4th and 6th
