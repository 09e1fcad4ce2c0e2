"""ZenML silently ignores unknown keys in a run configuration (`enable_cahce`), so check them here."""

import inspect
from pathlib import Path

import pytest
import yaml
from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
from zenml.config.step_configurations import StepConfigurationUpdate

import steps
from pipelines import clustering, training
from replearn.config import load_config
from replearn.stages import STAGES

RUN_CONFIGS = ["zenml_config.yaml", "zenml_config.demo.yaml"]


def run_config(repo_root: Path, name: str) -> dict:
    return yaml.safe_load((repo_root / name).read_text())


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_top_level_and_step_keys_are_real_zenml_settings(repo_root: Path, name: str) -> None:
    config = run_config(repo_root, name)
    assert set(config) <= set(PipelineRunConfiguration.model_fields), set(config) - set(
        PipelineRunConfiguration.model_fields
    )
    known_steps = set(steps.__all__)
    for name, step_config in (config.get("steps") or {}).items():
        assert name in known_steps, f"zenml_config.yaml configures unknown step {name}"
        assert set(step_config) <= set(StepConfigurationUpdate.model_fields), step_config


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_run_configs_leave_caching_to_the_steps(repo_root: Path, name: str) -> None:
    """A run-level enable_cache overrides every step's: clustering would be cached and miss new images."""
    assert "enable_cache" not in run_config(repo_root, name)


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_parameters_match_both_pipelines_and_the_params_file_is_valid(repo_root: Path, name: str) -> None:
    parameters = run_config(repo_root, name)["parameters"]
    for pipeline in (training, clustering):
        accepted = set(inspect.signature(pipeline.entrypoint).parameters)
        assert set(parameters) <= accepted, (pipeline.name, set(parameters) - accepted)
    load_config(repo_root / parameters["params_file"], parameters["overrides"])


@pytest.mark.parametrize("stage", ["validate", "preprocess", "train", "evaluate", "export"])
def test_step_cache_keys_hold_the_code_the_stage_runs(repo_root: Path, stage: str) -> None:
    """The step's cache follows the files of every module the stage imports (tests/test_dvc.py: dvc.yaml's too)."""
    files = getattr(steps, stage).configuration.cache_policy.file_dependencies
    assert all((repo_root / name).is_file() for name in files)
    assert set(files) == {path.as_posix() for path in STAGES[stage].code_files()}
    assert f"src/replearn/stages/{stage}.py" in files
