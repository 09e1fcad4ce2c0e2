"""The `replearn` console script run in the test's own process, as a user would call it."""

from __future__ import annotations

import sys

import pytest

from replearn.cli import run as cli_main


def replearn(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the console script in this process: (exit code, stdout and stderr with whitespace collapsed)."""
    monkeypatch.setattr(sys, "argv", ["replearn", *args])
    with pytest.raises(SystemExit) as exit_:
        cli_main()
    captured = capsys.readouterr()
    return int(exit_.value.code or 0), " ".join((captured.out + captured.err).split())
