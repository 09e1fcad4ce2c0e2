"""`python -m replearn` is the same as the `replearn` command."""

from replearn.cli import run

run()
