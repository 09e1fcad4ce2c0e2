import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from replearn import __version__
from replearn.cli import app

runner = CliRunner()


def replearn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "replearn", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "data" in result.output


COMMANDS = [
    [],
    *[[name] for name in ("validate", "preprocess", "train", "evaluate", "compare", "embed", "export", "cluster")],
    ["data", "chars"],
    ["data", "digits"],
    ["clusters", "status"],
    *[["clusters", name] for name in ("list", "show", "name", "confirm", "merge", "split", "move", "reject")],
    *[["clusters", name] for name in ("history", "undo")],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "replearn")
def test_help_shows_defaults_as_text_and_flags_without_a_type(command: list[str]) -> None:
    """ "[default: ...]" in a help text is text, not markup to drop; a plain flag takes no value to show."""
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    # What was left of "Iterations to train [default: train.iterations]." when Rich took the brackets for a style:
    assert not re.search(r"[a-z] \.(\s|$)", result.output, re.MULTILINE), result.output


def test_help_names_the_config_key_behind_a_default() -> None:
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert "Iterations to train; null (default)" in result.output and "[default: train.iterations]." in result.output
    assert "--force " in result.output and "--no-force" not in result.output


def test_an_option_help_is_its_config_description() -> None:
    from replearn.cli import from_config

    assert from_config("cluster.min_size").help == (
        "Clusters smaller than this go to cluster 0, unclustered (for a model trained on wide data, "
        "wide_min_size does) [default: cluster.min_size]."
    )
    with pytest.raises(ValueError, match="train.lr needs a description"):
        from_config("train.lr")
    with pytest.raises(KeyError, match="train.iteration is not a config key"):
        from_config("train.iteration")


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_unknown_command_is_a_usage_error() -> None:
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


def test_data_chars_with_overrides(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    result = runner.invoke(app, ["--set", "data.size=32", "data", "chars", str(out), "--per-class", "2"])
    assert result.exit_code == 0, result.output
    assert len(list(out.iterdir())) == 62
    assert "124" in result.output


def test_bad_config_exits_1_with_a_readable_message(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  per_clas: 3\n")
    result = replearn("--config", str(params), "data", "chars", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "did you mean 'per_class'" in result.stderr
    assert "Traceback" not in result.stderr


def test_existing_output_exits_1_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = replearn("data", "digits", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "--force" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_options_are_validated_like_params(tmp_path: Path) -> None:
    result = replearn("train", str(tmp_path / "pre"), str(tmp_path / "out"), "--iterations", "0")
    assert result.returncode == 1
    assert "train.iterations" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("option", "key"), [("--per-class", "data.per_class"), ("--size", "data.size")])
def test_demo_data_options_are_validated_like_params(tmp_path: Path, option: str, key: str) -> None:
    """--per-class 0 used to fall back to the default silently, and a negative count wrote empty classes."""
    result = replearn("data", "chars", str(tmp_path / "chars"), option, "0")
    assert result.returncode == 1
    assert key in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "chars").exists()
