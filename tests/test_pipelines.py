"""Both ZenML pipelines end to end on tiny data, in the throwaway ZenML store that conftest sets up."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from replearn.catalogue.read import current_assignments
from replearn.html_images import embedded_images
from repo_copy import copy_repository

pytestmark = pytest.mark.slow

TINY_PARAMS: dict[str, Any] = {
    "validate": {"workers": 1},
    "preprocess": {"resize": {"size": 32}, "workers": 1},
    "train": {
        "model": {"d_model": 32, "layers": 1, "heads": 2, "embedding_dim": 16},
        "classes_per_batch": 4,
        "images_per_class": 2,
        "iterations": 2,
        "warmup_iterations": 1,
        "checkpoint_every": 2,
        "loader_workers": 0,
        "augmentations": [],
    },
    "evaluate": {"embedding_map": "pca"},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    """Tiny chars data, an inbox of classes, a params file and a run config pointing at them."""
    from zenml.utils import source_utils

    from replearn.data.chars import generate_chars

    source_utils.set_custom_source_root(str(repo_root))
    root = tmp_path_factory.mktemp("zenml-project")
    generate_chars(root / "data" / "raw", per_class=6, size=32, seed=0)
    inbox = root / "data" / "inbox"
    for label in ("upper_A", "digit_3"):
        shutil.copytree(root / "data" / "raw" / label, inbox / label)
    params = {"data": {"raw_dir": str(root / "data/raw"), "inbox_dir": str(inbox), "outputs_dir": str(root / "out")}}
    (root / "params.yaml").write_text(yaml.safe_dump(params | TINY_PARAMS))
    return root


def run_pipeline(name: str, project: Path, overrides: list[str] | None = None) -> Any:
    """Run a pipeline as `zenml pipeline run` does, with this project's params, and return the run."""
    from zenml.client import Client

    from pipelines import clustering, training

    pipeline = {"training": training, "clustering": clustering}[name]
    run_config = project / f"{name}-run.yaml"
    run_config.write_text(
        yaml.safe_dump({"parameters": {"params_file": str(project / "params.yaml"), "overrides": overrides or []}})
    )
    pipeline.with_options(config_path=str(run_config))()
    return Client().get_pipeline(name).last_run


def statuses(run: Any) -> dict[str, str]:
    return {name: str(step.status.value) for name, step in run.steps.items()}


def production_version() -> Any:
    from steps.production import require_production_version

    return require_production_version("replearn")


def set_production_score(score: float) -> None:
    from zenml import log_metadata

    from steps.register import GATE_METRIC

    log_metadata(metadata={GATE_METRIC: score}, model_name="replearn", model_version="production")


STEPS = ["validate", "preprocess", "train", "evaluate", "export", "register"]
# register is never cached: every run's model version gets the metrics.
CACHED_AFTER_VALIDATE = dict.fromkeys(STEPS[1:-1], "cached") | {"register": "completed"}


def visualizations(artifact: Any) -> list[tuple[str, Any]]:
    """(type, content) of each of an artifact's visualizations, read as the dashboard's server reads them."""
    from zenml.artifacts.utils import load_artifact_visualization

    return [
        (str(shown.type.value), load_artifact_visualization(artifact, index).value)
        for index, shown in enumerate(artifact.visualizations)
    ]


def assert_shown_in_the_dashboard(run: Any) -> None:
    """validate's table as Markdown, evaluate's plots as images, its headline metrics as step metadata."""
    ((kind, table),) = visualizations(run.steps["validate"].outputs["validation_report"][0])
    assert kind == "markdown" and "| min\\_width | passed |" in table and "[Data Docs](file://" in table
    plots = run.steps["evaluate"].outputs["evaluation_plots"][0]
    names = [shown.uri.split("/")[-1] for shown in plots.visualizations]  # what the dashboard's chooser lists
    assert names[:3] == ["similarity_histograms.png", "threshold_curves.png", "embedding_map.png"]
    assert [Path(path).name for path in plots.load().paths] == names
    for kind, picture in visualizations(plots):
        assert kind == "image"
        with Image.open(io.BytesIO(picture)) as image:
            image.load()
    headline = run.steps["evaluate"].run_metadata
    assert 0.0 <= float(headline["seen/precision_at_1"]) <= 1.0 and "cluster/threshold" in headline


def latest_version() -> Any:
    from zenml.client import Client
    from zenml.enums import ModelStages

    return Client().get_model_version("replearn", ModelStages.LATEST)


def test_training_pipeline_caching_and_promotion(project: Path) -> None:
    from pipelines.preflight import require_production_model
    from replearn.config import load_config
    from replearn.errors import UserError

    with pytest.raises(UserError, match="run `zenml pipeline run training` first"):
        require_production_model(load_config(project / "params.yaml"))

    first = run_pipeline("training", project)
    assert statuses(first) == dict.fromkeys(STEPS, "completed")
    assert_shown_in_the_dashboard(first)
    trained = first.steps["train"].run_metadata
    assert trained["iterations"] == 2 and trained["images_per_second"] > 0 and trained["precision"] in ("fp32", "bf16")
    production = production_version()
    assert production.number == 1
    assert 0.0 <= float(production.run_metadata["seen/precision_at_1"]) <= 1.0
    assert -1.0 <= float(production.run_metadata["threshold"]) <= 1.0
    onnx_file = production.get_artifact("onnx_model").load()
    assert Path(onnx_file.path).read_bytes()[:2] == b"\x08\x09" or Path(onnx_file.path).stat().st_size > 1000

    again = run_pipeline("training", project)
    assert statuses(again) == {"validate": "cached"} | CACHED_AFTER_VALIDATE
    assert_shown_in_the_dashboard(again)  # a cached step shows what it showed
    assert latest_version().number == 2 and "seen/precision_at_1" in latest_version().run_metadata
    assert production_version().number == 1  # the same scores do not beat production

    touched = next((project / "data" / "raw" / "upper_B").glob("*.png"))
    os.utime(touched, ns=(1, 1))  # same content, new mtime: validation reruns, nothing after it
    revalidated = run_pipeline("training", project)
    assert statuses(revalidated) == {"validate": "completed"} | CACHED_AFTER_VALIDATE

    tiny = touched.parent / "tiny.png"
    Image.new("L", (4, 4), 255).save(tiny)  # below validate.min_width: quarantined, so nothing after it changes
    try:
        quarantined = run_pipeline("training", project, ["validate.on_error=quarantine"])
    finally:
        tiny.unlink()
    assert statuses(quarantined) == {"validate": "completed"} | CACHED_AFTER_VALIDATE

    set_production_score(2.0)  # nothing can beat this: the next version must not be promoted
    retrained = run_pipeline("training", project, ["train.iterations=3"])
    assert statuses(retrained) == {
        "validate": "cached",
        "preprocess": "cached",
        "train": "completed",
        "evaluate": "completed",
        "export": "completed",
        "register": "completed",
    }
    assert retrained.steps["register"].outputs["promoted"][0].load() is False
    assert production_version().number == 1

    set_production_score(-1.0)
    new_image = project / "data" / "raw" / "upper_A" / "Extra_00000.png"
    with Image.open(next(new_image.parent.glob("*.png"))) as source:
        source.rotate(5, fillcolor=255).save(new_image)
    try:
        changed = run_pipeline("training", project, ["train.iterations=3"])
    finally:
        new_image.unlink()
    assert statuses(changed) == dict.fromkeys(STEPS, "completed")
    validated = changed.steps["validate"].run_metadata
    assert validated["cached_files"] == validated["files"] - 1  # only the new image was read
    assert changed.steps["register"].outputs["promoted"][0].load() is True
    assert production_version().number == 6  # one model version per run: the sixth run is production


def test_clustering_pipeline_uses_production_and_is_idempotent(project: Path) -> None:
    if not (project / "out" / "zenml" / "export").exists():
        run_pipeline("training", project)
    first = run_pipeline("clustering", project)
    assert statuses(first) == dict.fromkeys(["load_production_model", "cluster", "report"], "completed")
    summary = first.steps["cluster"].outputs["cluster_run"][0].load()
    assert summary["new_images"] == 12
    assert Path(summary["report"]).is_file()
    ((kind, page),) = visualizations(first.steps["report"].outputs["cluster_report"][0])
    assert kind == "html" and not re.findall(r'(?:src|href)="(?!data:image/jpeg;base64,)', page)
    assert embedded_images(page)  # the montages are inside the page, and decode
    assert (project / "out" / "zenml" / "clusters" / "catalogue" / "manifest.json").is_file()  # one, for every model

    second = run_pipeline("clustering", project)
    repeat = second.steps["cluster"].outputs["cluster_run"][0].load()
    assert repeat["new_images"] == 0 and repeat["report"] == ""


def test_a_promoted_model_migrates_the_clustering_catalogue(project: Path) -> None:
    out = project / "out" / "zenml" / "clusters"
    if not (out / "catalogue").exists():
        run_pipeline("training", project)
        run_pipeline("clustering", project)
    before = current_assignments(out).set_index("path")["cluster_id"]
    set_production_score(-1.0)  # the next version beats production
    promoted = run_pipeline("training", project, ["train.seed=1"])
    assert promoted.steps["register"].outputs["promoted"][0].load() is True

    migrated = run_pipeline("clustering", project).steps["cluster"].outputs["cluster_run"][0].load()
    assert migrated["new_images"] == 0 and migrated["migration/images"] == len(before) == 12
    assert current_assignments(out).set_index("path")["cluster_id"].equals(before)  # one catalogue, every id kept
    assert list(out.glob("*/catalogue")) == []


def test_summary_reports_the_last_runs_and_copies_the_pictures(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines import summary

    if summary.last_run("clustering") is None:
        run_pipeline("training", project)
        run_pipeline("clustering", project)
    run_pipeline("clustering", project)  # nothing new: what a second `make demo` shows
    monkeypatch.setattr("sys.argv", ["summary", "--docs", str(tmp_path / "docs")])
    monkeypatch.setattr(summary, "console", summary.Console(width=200))
    summary.main()
    printed = capsys.readouterr().out
    assert "P@1, seen classes" in printed and "time per stage" in printed
    assert "0 new of 12: all clustered by earlier runs" in printed and "the model of this training run" in printed
    assert "ONNX model:" in printed
    report = re.search(r"clustering report: (\S+)", printed)
    assert report is not None and report.group(1).endswith("report.html") and Path(report.group(1)).is_file()
    # cluster_report.png too when the report has clusters to show: the tiny model may leave all unclustered.
    assert {"similarity_histograms.png", "embedding_map.png"} <= {p.name for p in (tmp_path / "docs").iterdir()}


def test_summary_says_when_production_is_not_the_last_trained_model() -> None:
    """The promotion gate can keep an older model in production: the P@1 shown is then not the clustering model's."""
    from types import SimpleNamespace

    from pipelines.summary import clustering_model_note

    production = SimpleNamespace(number=3, run_metadata={"onnx_sha256": "aaa"})
    assert clustering_model_note(production, "aaa") == "production version 3, the model of this training run"
    assert clustering_model_note(production, "bbb").startswith("production version 3, not this run's model")
    assert clustering_model_note(None, "aaa") == "none in production"


def test_the_literal_zenml_commands_in_a_copy_of_the_repository(tmp_path: Path) -> None:
    """`zenml pipeline run training|clustering` as the README gives them, from the root of a fresh copy."""
    from replearn.data.chars import generate_chars

    root = tmp_path / "repo"
    copy_repository(root)
    generate_chars(root / "data" / "raw", per_class=6, size=32, seed=0)
    shutil.copytree(root / "data" / "raw" / "upper_A", root / "data" / "inbox" / "upper_A")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    bin_dir = Path(sys.executable).parent
    env = {key: value for key, value in os.environ.items() if not key.startswith("ZENML_")} | {
        "ZENML_CONFIG_PATH": str(tmp_path / "zenml"),  # its own store; the copy's .zen is the repository
        "ZENML_ANALYTICS_OPT_IN": "false",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)

    too_early = run("zenml", "pipeline", "run", "clustering")
    assert too_early.returncode == 1 and "no production version" in too_early.stderr
    status = root / "outputs" / "zenml" / "clusters" / "run_status.json"
    failed = yaml.safe_load(status.read_text())  # a scheduled run that cannot start is a failed run
    assert failed["consecutive_failures"] == 1 and failed["last_failure"]["step"] == "preflight"
    trained = run("zenml", "pipeline", "run", "training")
    assert trained.returncode == 0, trained.stderr[-3000:]
    clustered = run("zenml", "pipeline", "run", "clustering")
    assert clustered.returncode == 0, clustered.stderr[-3000:]
    shown = run(str(bin_dir / "replearn"), "clusters", "status", "outputs/zenml/clusters")
    assert shown.returncode == 0 and "run 1: 6 new of 6 images" in shown.stdout, shown.stdout + shown.stderr
    assert "consecutive failures: 0" in shown.stdout and "in step preflight: there is no production" in shown.stdout
    clusters = root / "outputs" / "zenml" / "clusters"
    assert len(current_assignments(clusters)) == 6

    # A scheduled run must see what is new: its steps are never cached.
    shutil.copy(next((root / "data" / "raw" / "lower_b").iterdir()), root / "data" / "inbox" / "upper_A" / "new.png")
    again = run("zenml", "pipeline", "run", "clustering")
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(current_assignments(clusters)) == 7
    summary = run(str(bin_dir / "python"), "-m", "pipelines.summary")
    assert summary.returncode == 0 and "1 new of 7" in summary.stdout


def ensure_production_model(project: Path) -> None:
    from steps.production import production_version as current

    if current("replearn") is None:
        run_pipeline("training", project)


def run_scheduled_clustering(project: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What cron's `zenml pipeline run clustering -c FILE` runs: the pipeline as the root clustering.py builds it
    (zenml_config.yaml applied, with its retries, but waiting 1 s, then 2 s, instead of 30 s and 60 s)."""
    from zenml.client import Client

    from pipelines import preflight
    from pipelines.clustering import INFERENCE_IMAGE, clustering

    run_config = yaml.safe_load(preflight.RUN_CONFIG.read_text())
    for step in run_config["steps"].values():
        step["retry"] = step["retry"] | {"delay": 1}
    faster = project / "zenml_config.fast-retries.yaml"
    faster.write_text(yaml.safe_dump(run_config))
    monkeypatch.setattr(preflight, "RUN_CONFIG", faster)
    parameters = project / "clustering-run.yaml"
    parameters.write_text(yaml.safe_dump({"parameters": {"params_file": str(project / "params.yaml")}}))
    pipeline = preflight.apply_run_config(clustering, settings=INFERENCE_IMAGE)
    pipeline = pipeline.with_options(config_path=str(parameters))
    try:
        pipeline()
    finally:
        monkeypatch.undo()  # RUN_CONFIG, and the test's stand-in for the stage
    return Client().get_pipeline("clustering").last_run


def failing_stage(failures: int) -> Any:
    """The cluster stage, failing its first `failures` calls with a transient-looking I/O error."""
    import replearn.stages.cluster

    real, calls = replearn.stages.cluster.stage, []

    def stage(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise OSError(5, "Input/output error on the inbox share")
        return real(*args, **kwargs)

    stage.calls = calls  # type: ignore[attr-defined]
    return stage


def test_a_transient_failure_is_retried_and_the_run_ends_green(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zenml.client import Client

    from replearn.clustering.run_status import read_run_status

    ensure_production_model(project)
    clusters = project / "out" / "zenml" / "clusters"
    before = read_run_status(clusters)
    flaky = failing_stage(2)
    monkeypatch.setattr("replearn.stages.cluster.stage", flaky)
    run = run_scheduled_clustering(project, monkeypatch)
    assert len(flaky.calls) == 3
    assert str(run.status.value) == "completed"
    assert statuses(run) == dict.fromkeys(["load_production_model", "cluster", "report"], "completed")
    attempts = Client().list_run_steps(pipeline_run_id=run.id, name="cluster", sort_by="asc:version", size=10)
    assert [str(step.status.value) for step in attempts.items] == ["retried", "retried", "completed"]
    after = read_run_status(clusters)
    assert after.consecutive_failures == 0 and after.last_failure == before.last_failure  # retried tries are no failure
    assert after.last_success is not None and after.last_success != before.last_success


def test_a_run_that_keeps_failing_shows_in_status_and_in_the_alerter(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A stack with an alerter of a flavor of our own (tests/file_alerter.py) that appends to a file."""
    from typer.testing import CliRunner
    from zenml.client import Client
    from zenml.enums import StackComponentType

    from file_alerter import SEPARATOR
    from replearn.cli import app
    from replearn.clustering.run_status import read_run_status

    ensure_production_model(project)
    client, alerts = Client(), tmp_path / "alerts.txt"
    client.create_flavor(source="file_alerter.FileAlerterFlavor", component_type=StackComponentType.ALERTER)
    client.create_stack_component("file_alerter", "file", StackComponentType.ALERTER, {"path": str(alerts)})
    default = client.active_stack_model
    components = {kind: [c.id for c in found] for kind, found in default.components.items()}
    client.create_stack("with_file_alerter", components | {StackComponentType.ALERTER: "file_alerter"})
    client.activate_stack("with_file_alerter")
    clusters = project / "out" / "zenml" / "clusters"
    try:
        before = read_run_status(clusters).consecutive_failures
        for _ in range(2):
            monkeypatch.setattr("replearn.stages.cluster.stage", failing_stage(99))
            with pytest.raises(RuntimeError, match="failure in step\(s\): cluster"):
                run_scheduled_clustering(project, monkeypatch)
        status = read_run_status(clusters)
        assert status.consecutive_failures == before + 2  # runs, not their 3 tries each
        assert status.last_failure is not None and status.last_failure.step == "cluster"
        assert status.last_failure.reason == "OSError: [Errno 5] Input/output error on the inbox share"
        shown = CliRunner().invoke(app, ["clusters", "status", str(clusters)])
        assert shown.exit_code == 0 and f"consecutive failures: {before + 2}" in shown.output
        assert "in step cluster: OSError: [Errno 5] Input/output error" in " ".join(shown.output.split())

        messages = alerts.read_text().split(SEPARATOR)[:-1]
        assert len(messages) == 2
        assert f"clustering failed ({before + 2} runs in a row) in step cluster: OSError" in messages[1]
        assert "last good run: " in messages[1] and f"replearn clusters status {clusters}" in messages[1]

        run_scheduled_clustering(project, monkeypatch)  # the share is back
        assert read_run_status(clusters).consecutive_failures == 0
        recovered = alerts.read_text().split(SEPARATOR)[:-1]
        assert len(recovered) == 3 and f"green again after {before + 2} failed run(s)" in recovered[2]
    finally:
        client.activate_stack(default.id)


def test_data_that_fails_validation_shows_why_on_the_failed_step(project: Path) -> None:
    """Last in the module: the failed run becomes the last training run, which the summary test must not see."""
    from zenml.client import Client

    tiny = project / "data" / "raw" / "upper_B" / "tiny.png"
    Image.new("L", (4, 4), 255).save(tiny)  # below validate.min_width
    try:
        with pytest.raises(RuntimeError, match="validate"):
            run_pipeline("training", project)
    finally:
        tiny.unlink()
    failed = Client().get_pipeline("training").last_run
    assert str(failed.steps["validate"].status.value) == "failed"
    ((kind, table),) = visualizations(failed.steps["validate"].outputs["validation_report"][0])
    assert kind == "markdown" and "data is NOT valid" in table
    row = r"| min\_width: width >= 8 px (validate.min\_width) | **FAILED** | 1 | upper\_B/tiny.png: 4x4 px |"
    assert row in table
