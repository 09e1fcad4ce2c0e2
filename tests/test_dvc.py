"""`dvc repro` of the whole pipeline, end to end, in a throwaway copy of the repository.

The copy gets its own git history, its own DVC cache and remote, tiny params (32 px, a tiny model, a
few iterations) and tiny generated data; DVC's global, system and site-cache directories point into
the temporary folder, so nothing touches the user's configuration. The first `dvc repro` is shared
by the tests below, which run in file order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from replearn import stages
from repo_copy import copy_repository
from tiny_params import TINY_STAGE_PARAMS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ["validate", "preprocess", "train", "evaluate", "export", "cluster"]

TINY_PARAMS = {
    "data": {"raw_dir": "data/raw", "per_class": 6, "size": 32, "seed": 0},
    **TINY_STAGE_PARAMS,
    "validate": {"min_width": 8, "min_height": 8, "on_error": "fail", "workers": 1},
    "preprocess": {"resize": {"size": 32, "mode": "pad"}, "workers": 2},
}


@dataclass
class DvcRepo:
    root: Path
    env: dict[str, str]
    first_repro: str
    repro_without_data: subprocess.CompletedProcess[str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(args, cwd=self.root, env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("dvc", *args, check=check)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "--quiet", "--allow-empty", "-m", message)


def stages_run(output: str) -> set[str]:
    """The stages whose command DVC ran, from its `Running stage 'name':` lines."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def read_tree(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def isolated_env(tmp: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ZENML_", "DVC_", "GIT_"))}
    for name in ("dvc-global", "dvc-system", "dvc-site-cache"):
        (tmp / name).mkdir()
    (tmp / "gitconfig").write_text("[user]\n\tname = replearn tests\n\temail = tests@replearn.invalid\n")
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DVC_GLOBAL_CONFIG_DIR": str(tmp / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(tmp / "dvc-system"),
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site-cache"),
        "DVC_NO_ANALYTICS": "1",
        "DVC_STUDIO_OFFLINE": "true",
        "GIT_CONFIG_GLOBAL": str(tmp / "gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2"),
    }
    return env


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> DvcRepo:
    """A repository copy with tiny params and data, after its first `dvc repro`."""
    tmp = tmp_path_factory.mktemp("dvc")
    root = tmp / "repo"
    copy_repository(root)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False))
    repo = DvcRepo(root, isolated_env(tmp), "", subprocess.CompletedProcess([], 0))
    repo.run("git", "init", "--quiet", "--initial-branch", "main")
    repo.dvc("remote", "modify", "--local", "local", "url", str(tmp / "remote"))
    repo.commit("copy of replearn with tiny params")
    repo.repro_without_data = repo.dvc("repro", check=False)

    repo.run("replearn", "data", "chars", "data/raw")
    repo.run("replearn", "data", "chars", "data/inbox", "--per-class", "2", "--seed", "1")
    repo.dvc("add", "data/raw", "data/inbox")
    repo.commit("tiny data")
    repo.first_repro = repo.dvc("repro").stdout
    repo.commit("first repro")
    return repo


def test_repro_without_data_names_the_missing_folder(dvc_repo: DvcRepo) -> None:
    result = dvc_repo.repro_without_data
    assert result.returncode != 0
    assert "missing data 'source': data/raw" in result.stdout + result.stderr  # docs/dvc.md quotes this


def test_repro_runs_every_stage(dvc_repo: DvcRepo) -> None:
    assert stages_run(dvc_repo.first_repro) == set(STAGES)
    outputs = dvc_repo.root / "outputs"
    metrics = json.loads((outputs / "evaluate" / "metrics.json").read_text())
    assert 0.0 <= metrics["seen/precision_at_1"] <= 1.0
    curve = (outputs / "evaluate" / "threshold_curve.csv").read_text().splitlines()
    assert curve[0] == "threshold,precision,recall,f1" and len(curve) > 2
    assert (outputs / "train" / "metrics.csv").read_text().startswith("iteration,loss,")
    assert (outputs / "model.onnx").stat().st_size > 0
    assert (outputs / "clusters" / "catalogue" / "manifest.json").is_file()
    lock = yaml.safe_load((dvc_repo.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["iterations"] == 3
    # DVC's own .gitignore handling agrees with ours: git tracks the metrics and the .dvc files, nothing else.
    tracked = set(dvc_repo.run("git", "ls-files").stdout.split())
    assert {"outputs/evaluate/metrics.json", "data/raw.dvc", "data/inbox.dvc", "dvc.lock"} <= tracked
    assert not [name for name in tracked if name.startswith(("data/raw/", "data/inbox/", "outputs/train/"))]


def test_second_repro_does_nothing(dvc_repo: DvcRepo) -> None:
    # Python's bytecode caches land in the stages' code deps whenever a module is imported.
    bytecode = dvc_repo.root / "src" / "replearn" / "training" / "__pycache__" / "loss.cpython-311.pyc"
    bytecode.parent.mkdir(exist_ok=True)
    bytecode.write_bytes(b"not code")
    output = dvc_repo.dvc("repro").stdout
    assert stages_run(output) == set()
    assert "up to date" in dvc_repo.dvc("status").stdout


def test_changing_one_param_reruns_only_its_stages(dvc_repo: DvcRepo) -> None:
    """cluster.min_size is read by cluster and by evaluate (which calibrates the Louvain resolution with it).

    Export follows when threshold.json's content changes; training and everything before it never reruns.
    """
    params_file = dvc_repo.root / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["cluster"]["min_size"] = 3
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    assert {"evaluate", "cluster"} <= stages_run(dvc_repo.dvc("repro").stdout) <= {"evaluate", "export", "cluster"}
    dvc_repo.commit("cluster.min_size=3")


def test_metrics_and_plots(dvc_repo: DvcRepo) -> None:
    shown = json.loads(dvc_repo.dvc("metrics", "show", "--json").stdout)
    (workspace,) = shown.values()  # keyed by revision; the workspace's key is ""
    metrics = workspace["data"]["outputs/evaluate/metrics.json"]["data"]
    assert "seen/precision_at_1" in metrics
    diff = dvc_repo.dvc("metrics", "diff", "--all", "--json").stdout
    assert "seen/precision_at_1" in json.loads(diff)["outputs/evaluate/metrics.json"]
    plots = json.loads(dvc_repo.dvc("plots", "show", "--json").stdout)
    assert not plots.get("errors")
    for name, rows in (("training loss", 3), ("threshold curve", 3)):
        (plot,) = plots["data"][name]
        assert len(plot["content"]["data"]["values"]) >= rows, name


def test_push_then_pull_restores_raw_data_byte_identical(dvc_repo: DvcRepo) -> None:
    raw = dvc_repo.root / "data" / "raw"
    before = read_tree(raw)
    dvc_repo.dvc("push")
    shutil.rmtree(raw)
    shutil.rmtree(dvc_repo.root / ".dvc" / "cache")
    dvc_repo.dvc("pull")
    assert read_tree(raw) == before
    assert stages_run(dvc_repo.dvc("repro").stdout) == set()


def test_exp_run_with_a_changed_param(dvc_repo: DvcRepo) -> None:
    result = dvc_repo.dvc("exp", "run", "-S", "train.iterations=4")
    assert stages_run(result.stdout) == {"train", "evaluate", "export", "cluster"}
    summary = json.loads((dvc_repo.root / "outputs" / "train" / "train_summary.json").read_text())
    assert summary["iterations"] == 4
    assert dvc_repo.dvc("exp", "list", "--name-only").stdout.split()
    changed = json.loads(dvc_repo.dvc("params", "diff", "--json").stdout)["params.yaml"]["train.iterations"]
    assert (changed["old"], changed["new"]) == (3, 4)
    metrics = json.loads(dvc_repo.dvc("metrics", "diff", "--json").stdout)["outputs/evaluate/metrics.json"]
    assert "threshold" in metrics  # a retrained model calibrates another threshold


# Modules whose edits cannot change a stage's results.
RESULT_NEUTRAL_MODULES = {"replearn.atomic", "replearn.console", "replearn.errors"}
DVC_STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(DVC_STAGES))
def test_stage_deps_cover_every_module_the_stage_imports(stage: str) -> None:
    """A code change must rerun every stage whose results it can change: the table knows the modules, dvc.yaml lists."""
    deps = [Path(dep) for dep in DVC_STAGES[stage]["deps"]]
    neutral = {stages.module_file(module) for module in RESULT_NEUTRAL_MODULES}
    uncovered = [
        str(path)
        for path in stages.STAGES[stage].code_files()
        if path not in neutral and path.name != "__init__.py" and not any(path == d or d in path.parents for d in deps)
    ]
    assert not uncovered, f"dvc.yaml stage {stage} lacks deps: {uncovered}"


@pytest.mark.parametrize("stage", list(DVC_STAGES))
def test_stage_params_are_what_the_stage_reads(stage: str) -> None:
    """DVC reruns a stage on the params it declares, ZenML on the config the step gets: both come from STAGES.

    dvc.yaml may name a whole section where the stage reads some of its keys (DVC refuses a params.yaml
    that lacks a declared key, and users' files leave keys to their defaults), but nothing else.
    """
    params = set(DVC_STAGES[stage]["params"])
    reads, allowed = set(stages.STAGES[stage].reads), set(stages.STAGES[stage].config_keys)
    assert all(key in params or key.split(".")[0] in params for key in reads), (params, reads)
    assert params <= allowed | {key.split(".")[0] for key in allowed}, params - allowed
