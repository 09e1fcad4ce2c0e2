"""The Dockerfile, read as text: its stages, what it copies, what it runs and what each target installs.

No Docker engine is needed for these checks; building the images is a separate test that skips with the
reason when `docker info` cannot reach an engine.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker.utils.build import exclude_paths
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from replearn.export.onnx_export import ExportResult

TARGETS = ("training", "inference")
TORCH_DISTRIBUTIONS = {"torch", "torchvision", "pytorch-metric-learning", "triton"}
# Every option that pip install takes with a separate value, in the forms the Dockerfile uses.
PIP_OPTIONS_WITH_VALUE = {"--constraint", "-c", "--requirement", "-r", "--wheel-dir", "-w"}


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def read_stages(dockerfile: Path) -> dict[str, Stage]:
    """The build stages by name, each with its instructions (keyword, arguments); continuations joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = arguments.split()
            assert len(parts) == 3 and parts[1].upper() == "AS", f"every stage is named: {line}"
            current = stages[parts[2]] = Stage(parts[2], parts[0])
        elif current is not None:
            current.instructions.append((keyword, arguments.strip()))
    return stages


def stage_chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The stages a target is built from: its FROM ancestors and every stage it copies from, recursively."""
    seen: dict[str, Stage] = {}
    pending = [target]
    while pending:
        name = pending.pop()
        if name in seen or name not in stages:
            continue
        stage = seen[name] = stages[name]
        pending.append(stage.parent)
        copies = [re.search(r"--from=(\S+)", args) for keyword, args in stage.instructions if keyword == "COPY"]
        pending += [match.group(1) for match in copies if match]
    return list(seen.values())


def pip_installs(stage: Stage) -> list[list[str]]:
    """The arguments of each `pip install` in the stage's RUN instructions."""
    installs = []
    for keyword, arguments in stage.instructions:
        if keyword != "RUN":
            continue
        for command in arguments.split("&&"):
            words = shlex.split(command.strip())
            if words[:2] == ["pip", "install"]:
                installs.append(words[2:])
    return installs


def requirement_names(arguments: list[str]) -> list[str]:
    """The packages named on a pip install line (options, their values and build-arg expansions left out)."""
    names, skip = [], False
    for word in arguments:
        if skip:
            skip = False
        elif word in PIP_OPTIONS_WITH_VALUE:
            skip = True
        elif not word.startswith(("-", "$")):
            names.append(word)
    return names


def closure(requirements: list[str]) -> set[str]:
    """Installed distributions these requirements pull in, following the installed metadata (extras included)."""
    found: set[str] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        key = name + "[" + ",".join(sorted(requirement.extras)) + "]"
        if key in found:
            continue
        found |= {key, name}
        for text in metadata.distribution(name).requires or []:
            dependency = Requirement(text)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if dependency.marker is None or any(dependency.marker.evaluate(env) for env in environments):
                pending.append(dependency)
    return {name for name in found if "[" not in name}


@pytest.fixture(scope="module")
def stages(repo_root: Path) -> dict[str, Stage]:
    return read_stages(repo_root / "Dockerfile")


def test_multi_stage_with_a_training_and_an_inference_target(stages: dict[str, Stage]) -> None:
    assert set(TARGETS) <= set(stages)
    for target in TARGETS:
        chain = stage_chain(stages, target)
        assert len(chain) >= 3, f"{target} is built in stages: {[stage.name for stage in chain]}"


def test_copy_sources_exist_and_are_in_the_build_context(stages: dict[str, Stage], repo_root: Path) -> None:
    patterns = [
        line.strip()
        for line in (repo_root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = set(exclude_paths(str(repo_root), patterns, dockerfile="Dockerfile"))
    names = list(stages)
    for stage in stages.values():
        for keyword, arguments in stage.instructions:
            if keyword not in {"COPY", "ADD"}:
                continue
            words = arguments.split()
            flags = [word for word in words if word.startswith("--")]
            sources = [word for word in words if not word.startswith("--")][:-1]
            source_stage = next((flag.split("=", 1)[1] for flag in flags if flag.startswith("--from=")), None)
            if source_stage is not None:
                assert names.index(source_stage) < names.index(stage.name), f"{stage.name}: {arguments}"
                continue
            for source in sources:
                assert (repo_root / source).exists(), f"{stage.name}: COPY {source} does not exist in the repo"
                assert source.rstrip("/") in context, f"{stage.name}: COPY {source} is excluded by .dockerignore"


def test_dockerignore_keeps_data_environments_and_outputs_out(repo_root: Path) -> None:
    patterns = [line.strip() for line in (repo_root / ".dockerignore").read_text().splitlines()]
    assert {".venv", "data", "outputs", ".zen", ".dvc/cache", ".git"} <= set(patterns)


def test_entrypoint_runs_the_replearn_console_script_as_a_non_root_user(
    stages: dict[str, Stage], repo_root: Path
) -> None:
    scripts = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["scripts"]
    for target in TARGETS:
        instructions = dict(stages[target].instructions)
        command = yaml.safe_load(instructions["ENTRYPOINT"])  # exec form: a JSON list
        assert isinstance(command, list) and command[0] in scripts, (target, command)
        module, function = scripts[command[0]].split(":")
        assert callable(getattr(importlib.import_module(module), function))
        assert instructions["USER"] not in {"root", "0"}, target


def test_training_installs_the_project_from_the_pinned_constraints(stages: dict[str, Stage]) -> None:
    installs = [args for stage in stage_chain(stages, "training") for args in pip_installs(stage)]
    for arguments in installs:
        assert "--no-deps" in arguments or "constraints.txt" in arguments, arguments
    assert any("requirements.txt" in arguments for arguments in installs), "the project's dependencies"


def test_inference_target_installs_no_torch(stages: dict[str, Stage]) -> None:
    installs = [args for stage in stage_chain(stages, "inference") for args in pip_installs(stage)]
    for arguments in installs:
        assert "--no-deps" in arguments or "constraints.txt" in arguments, arguments
        assert "requirements.txt" not in arguments, "the inference image must not install all project dependencies"
    pulled_in = closure([name for arguments in installs for name in requirement_names(arguments) if "/" not in name])
    assert "onnxruntime-gpu" in pulled_in and "zenml" in pulled_in
    assert not pulled_in & TORCH_DISTRIBUTIONS, pulled_in & TORCH_DISTRIBUTIONS


BLOCKER = """
import importlib.metadata, sys
allowed = set({allowed!r})
providers = importlib.metadata.packages_distributions()
blocked = {{top for top, dists in providers.items() if not {{d.lower().replace("_", "-") for d in dists}} & allowed}}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{{name}} is not installed in the inference image")
sys.meta_path.insert(0, Block())
from replearn.cli import run
sys.argv = ["replearn", *{argv!r}]
run()
"""


@pytest.mark.slow
def test_inference_packages_are_enough_to_cluster(
    stages: dict[str, Stage], tiny_export: ExportResult, chars_dir: Path, tmp_path: Path
) -> None:
    """`replearn cluster` runs end to end with only what the inference target installs importable."""
    installs = [args for stage in stage_chain(stages, "inference") for args in pip_installs(stage)]
    allowed = closure([name for arguments in installs for name in requirement_names(arguments) if "/" not in name])
    inbox = tmp_path / "inbox"
    for source in sorted(chars_dir.glob("digit_*"))[:4]:
        shutil.copytree(source, inbox / source.name)
    out = tmp_path / "clusters"
    argv = ["cluster", str(tiny_export.path), str(inbox), str(out)]
    script = BLOCKER.format(allowed=sorted(allowed | {"replearn"}), argv=argv)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "runs").is_dir() and any((out / "runs").glob("*/report.html"))


def test_zenml_docker_settings_build_from_this_dockerfile(stages: dict[str, Stage], repo_root: Path) -> None:
    from zenml.config import DockerSettings

    docker = yaml.safe_load((repo_root / "zenml_config.yaml").read_text())["settings"]["docker"]
    settings = DockerSettings.model_validate(docker)
    assert settings.dockerfile is not None and (repo_root / settings.dockerfile).is_file()
    assert settings.build_context_root == "."
    build = settings.parent_image_build_config
    assert build is not None and build.build_options is not None and build.dockerignore == ".dockerignore"
    assert build.build_options.model_extra is not None and build.build_options.model_extra["target"] in stages
    # The image is complete and runs as a non-root user: a ZenML layer on top would need root to install.
    assert not settings.install_stack_requirements and not settings.allow_including_files_in_images


@pytest.mark.slow
def test_image_builds_when_a_docker_engine_is_reachable(repo_root: Path, tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker command on this machine")
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        pytest.skip(f"no reachable Docker engine: {reason}")
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (repo_root / "Dockerfile").read_text(), re.MULTILINE)
    assert base is not None
    have_base = subprocess.run([docker, "image", "inspect", base.group(1)], capture_output=True).returncode == 0
    if not have_base and subprocess.run([docker, "pull", base.group(1)], capture_output=True).returncode != 0:
        pytest.skip(f"the base image {base.group(1)} is neither local nor reachable")
    for target in TARGETS:
        tag = f"replearn-test:{target}"
        build = subprocess.run(
            [docker, "build", "--target", target, "--tag", tag, str(repo_root)], capture_output=True, text=True
        )
        assert build.returncode == 0, build.stderr[-3000:]
        version = subprocess.run([docker, "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=300)
        assert version.returncode == 0 and "Usage" in version.stdout, version.stderr[-2000:]


def scaling_yaml(repo_root: Path, name: str) -> dict:
    """One of the run configurations under deploy/ that docs/scaling.md refers to, e.g. `k8s-gpu.yaml`."""
    path = repo_root / "deploy" / name
    text = path.read_text()
    assert text.startswith(f"# {name}"), f"{path}: the first line should name the file"
    scaling = (repo_root / "docs" / "scaling.md").read_text()
    assert f"deploy/{name}" in scaling, f"docs/scaling.md does not refer to {path}"
    loaded: dict = yaml.safe_load(text)
    return loaded


def check_orchestrator_settings(run_config: dict) -> None:
    """Keys both the Kubernetes and the Kubeflow orchestrator know (their validators need the kubernetes package)."""
    from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import KubeflowOrchestratorSettings
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    orchestrator = run_config["settings"]["orchestrator"]
    known = set(KubernetesOrchestratorSettings.model_fields) & set(KubeflowOrchestratorSettings.model_fields)
    assert set(orchestrator) <= known, set(orchestrator) - known
    pod = orchestrator["pod_settings"]
    assert set(pod) <= set(KubernetesPodSettings.model_fields), set(pod) - set(KubernetesPodSettings.model_fields)
    assert {mount["name"] for mount in pod["volume_mounts"]} <= {volume["name"] for volume in pod["volumes"]}


def compiled_steps(pipeline: Any) -> dict[str, Any]:
    """Every step's configuration, as ZenML compiles the run (_create_snapshot passes step_configurations as steps)."""
    pipeline.prepare()
    run_args = dict(pipeline._run_args)
    run_args["steps"] = run_args.pop("step_configurations", None)
    snapshot, _, _ = pipeline._compile(**run_args)
    return {name: step.config for name, step in snapshot.step_configurations.items()}


def docker_target(step_config: Any) -> str:
    target: str = step_config.settings["docker"].model_dump()["parent_image_build_config"]["build_options"]["target"]
    return target


@pytest.mark.slow
def test_deploy_gpu_run_config_gives_the_train_step_gpus_and_keeps_the_image(
    repo_root: Path, chars_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled on the local stack: `-c deploy/k8s-gpu.yaml` adds to zenml_config.yaml as docs/scaling.md says."""
    from pipelines import training
    from pipelines.preflight import apply_run_config

    run_config = scaling_yaml(repo_root, "k8s-gpu.yaml")
    check_orchestrator_settings(run_config)
    overrides = run_config["parameters"]["overrides"]
    overrides[:] = [f"data.raw_dir={chars_dir}" if o.startswith("data.raw_dir=") else o for o in overrides]
    overrides += [f"data.outputs_dir={tmp_path / 'outputs'}", f"data.inbox_dir={tmp_path / 'inbox'}"]
    config_file = tmp_path / "k8s-gpu.yaml"
    config_file.write_text(yaml.safe_dump(run_config))
    monkeypatch.chdir(repo_root)
    pipeline = apply_run_config(training).with_options(config_path=str(config_file))  # as `zenml pipeline run`
    steps = compiled_steps(pipeline)
    assert steps["train"].settings["resources"].gpu_count == 4
    assert "resources" not in steps["validate"].settings
    assert steps["train"].parameters["config"]["train"]["nproc_per_node"] == "auto"
    assert steps["train"].enable_cache is not False and steps["register"].enable_cache is False  # metrics every run
    assert all(config.retry is None for config in steps.values())  # the clustering steps' retries are theirs alone
    for config in steps.values():
        docker = config.settings["docker"].model_dump(exclude_unset=True)
        assert docker["dockerfile"] == "Dockerfile" and not docker["install_stack_requirements"]
        build_options = docker["parent_image_build_config"]["build_options"]
        assert build_options["target"] == "training"
        assert "kubernetes" in build_options["build_args"]["STACK_REQUIREMENTS"]


@pytest.mark.slow
@pytest.mark.parametrize("run_config", [None, "zenml_config.demo.yaml"])
def test_clustering_steps_get_the_inference_image(
    repo_root: Path, monkeypatch: pytest.MonkeyPatch, run_config: str | None
) -> None:
    """What `zenml pipeline run clustering [-c FILE]` compiles: ZenML rereads its config files at compile time."""
    from pipelines.clustering import INFERENCE_IMAGE, clustering
    from pipelines.preflight import apply_run_config

    monkeypatch.chdir(repo_root)
    pipeline = apply_run_config(clustering, settings=INFERENCE_IMAGE)
    if run_config:
        pipeline = pipeline.with_options(config_path=str(repo_root / run_config))
    steps = compiled_steps(pipeline)
    assert {docker_target(config) for config in steps.values()} == {"inference"}
    # Never cached, whatever the run config says: a cached run would not see the inbox's new images.
    assert not any(config.enable_cache for config in steps.values())
    # zenml_config.yaml's retries reach every clustering step, whatever -c adds.
    retries = {name: config.retry for name, config in steps.items()}
    assert all(r is not None and r.max_retries == 2 and r.backoff >= 1 for r in retries.values()), retries


def test_preflight_reads_the_parameters_of_the_run_config_given_with_c(tmp_path: Path) -> None:
    from pipelines.preflight import RUN_CONFIG, run_config_argument, run_parameters

    remote = tmp_path / "k8s.yaml"
    remote.write_text(yaml.safe_dump({"parameters": {"params_file": "p.yaml", "overrides": ["data.raw_dir=/mnt/raw"]}}))
    settings_only = tmp_path / "settings.yaml"
    settings_only.write_text(yaml.safe_dump({"settings": {"docker": {"dockerfile": "Dockerfile"}}}))
    ours = yaml.safe_load(RUN_CONFIG.read_text())["parameters"]
    assert run_config_argument(["zenml", "pipeline", "run", "training", "--config=a.yaml"]) == Path("a.yaml")
    assert run_parameters(["zenml", "pipeline", "run", "training", "-c", str(remote)])["overrides"] == [
        "data.raw_dir=/mnt/raw"
    ]
    assert run_parameters(["zenml", "pipeline", "run", "training", "-c", str(settings_only)]) == ours
    assert run_parameters(["zenml", "pipeline", "run", "training"]) == ours


def test_deploy_schedule_and_pytorchjob_are_well_formed(repo_root: Path) -> None:
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    hourly = scaling_yaml(repo_root, "clustering-hourly.yaml")
    schedule = PipelineRunConfiguration.model_validate(hourly).schedule
    assert schedule is not None and schedule.cron_expression == "0 * * * *"
    check_orchestrator_settings(hourly)
    # Its pods need the stack's packages (Kubernetes entrypoint, S3 artifact store) as the GPU run's do.
    assert hourly["settings"]["docker"] == scaling_yaml(repo_root, "k8s-gpu.yaml")["settings"]["docker"]

    job = scaling_yaml(repo_root, "pytorchjob.yaml")
    assert job["kind"] == "PyTorchJob"
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        container = replica["template"]["spec"]["containers"][0]
        assert container["command"] == ["torchrun", "-m", "replearn"]
        assert container["args"][2] == "train"  # the global --config first, as `replearn` wants it
