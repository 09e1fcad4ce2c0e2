"""Checks that run when `zenml pipeline run training|clustering` imports the root module, before ZenML
starts a run: a step run out of order gets one line that says what to run first, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipelines.inputs import MODEL_NAME, load_run_config, require_data
from replearn.config import Config
from replearn.errors import UserError

RUN_CONFIG = Path(__file__).resolve().parents[1] / "zenml_config.yaml"


def run_parameters(run_config: Path = RUN_CONFIG) -> dict[str, Any]:
    parameters: dict[str, Any] = (yaml.safe_load(run_config.read_text()) or {}).get("parameters") or {}
    return parameters


def require_production_model(config: Config) -> None:
    from steps.production import require_production_version

    require_production_version(MODEL_NAME)


def require_training_data(config: Config) -> None:
    require_data(config.data.raw_dir)


def preflight(check: Callable[[Config], None]) -> None:
    """Load the run's params and run `check`; on a user error print it and exit 1."""
    parameters = run_parameters()
    try:
        check(load_run_config(parameters.get("params_file", "params.yaml"), parameters.get("overrides")))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
