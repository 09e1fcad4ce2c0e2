"""Checks that run when `zenml pipeline run training|clustering` imports the root module, before ZenML
starts a run: a step run out of order gets one line that says what to run first, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from zenml.pipelines.pipeline_definition import Pipeline
from zenml.steps import BaseStep
from zenml.utils import dict_utils

from pipelines.inputs import MODEL_NAME, load_run_config, require_data
from replearn.config import Config
from replearn.errors import UserError

RUN_CONFIG = Path(__file__).resolve().parents[1] / "zenml_config.yaml"


def run_config_argument(argv: list[str]) -> Path | None:
    """The file given to `zenml pipeline run NAME -c FILE`, which ZenML applies only after importing NAME."""
    for index, argument in enumerate(argv):
        if argument in ("-c", "--config") and index + 1 < len(argv):
            return Path(argv[index + 1])
        if argument.startswith("--config="):
            return Path(argument.split("=", 1)[1])
    return None


def run_parameters(argv: list[str]) -> dict[str, Any]:
    """The pipeline parameters the run will get: the -c file's when it has any (they replace ours), else ours."""
    for path in (run_config_argument(argv), RUN_CONFIG):
        if path is not None and path.is_file():
            parameters: dict[str, Any] = (yaml.safe_load(path.read_text()) or {}).get("parameters") or {}
            if parameters:
                return parameters
    return {}


def pipeline_steps(pipeline: Pipeline) -> set[str]:
    """The names of the steps that a pipeline's module imports: each pipeline here calls every step it imports."""
    module = sys.modules[pipeline.entrypoint.__module__]
    return {value.name for value in vars(module).values() if isinstance(value, BaseStep)}


def apply_run_config(pipeline: Pipeline, settings: dict[str, Any] | None = None) -> Pipeline:
    """The pipeline configured with zenml_config.yaml, plus `settings` on top.

    The file's values are applied as configuration, not as a config_path: ZenML reads a
    config_path again when it compiles the run, which would undo `settings` given here.
    The file serves both pipelines: its `steps` entries for the other pipeline's steps are left
    out, which ZenML would otherwise warn about on every run.
    """
    run_config: dict[str, Any] = yaml.safe_load(RUN_CONFIG.read_text()) or {}
    if run_config.get("steps"):
        ours = pipeline_steps(pipeline)
        run_config["steps"] = {name: step for name, step in run_config["steps"].items() if name in ours}
    if settings:
        run_config["settings"] = dict_utils.recursive_update(run_config.get("settings") or {}, settings)
    return pipeline.with_options(**run_config)


def require_production_model(config: Config) -> None:
    from steps.production import require_production_version

    require_production_version(MODEL_NAME)


def require_training_data(config: Config) -> None:
    require_data(config.data.raw_dir)


def preflight(check: Callable[[Config], None], on_error: Callable[[Config, UserError], None] | None = None) -> None:
    """Load the run's params and run `check`; on a user error print it and exit 1.

    `on_error` hears of a failed check (clustering records it in its run status, as a failed run).
    """
    parameters = run_parameters(sys.argv)
    config: Config | None = None
    try:
        config = load_run_config(parameters.get("params_file", "params.yaml"), parameters.get("overrides"))
        check(config)
    except UserError as error:
        if on_error is not None and config is not None:
            on_error(config, error)
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
