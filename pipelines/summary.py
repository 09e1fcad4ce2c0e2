"""`python -m pipelines.summary`: what the last training and clustering runs did, read back from ZenML.

It prints the results (P@1 seen/unseen, threshold, clusters and their pairwise F1 against the
true classes), the time each stage took and the paths a newcomer wants to open next. With `--docs DIR` it
also copies the demo's pictures there for the README: the evaluation plots and a crop of the
clustering report (the montages of its largest clusters, stacked).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table
from zenml.client import Client

from pipelines.inputs import MODEL_NAME
from replearn.html_images import embedded_images
from steps.artifacts import ArtifactName
from steps.production import production_version

console = Console()
REPORT_CROP_CLUSTERS = 4


def last_run(pipeline_name: str) -> Any | None:
    try:
        return Client().get_pipeline(pipeline_name).last_run
    except KeyError:
        return None


def output(run: Any, step_name: str, artifact: ArtifactName) -> Any:
    return run.steps[step_name].outputs[artifact][0]


def seconds(step: Any) -> float:
    if step.start_time is None or step.end_time is None:
        return 0.0
    return float((step.end_time - step.start_time).total_seconds())


def stage_table(*runs: Any) -> Table:
    table = Table(title="time per stage")
    for column in ("pipeline", "step", "seconds", "status"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for run in runs:
        for name, step in run.steps.items():
            table.add_row(run.pipeline.name, name, f"{seconds(step):.1f}", step.status.value)
    return table


def clustering_model_note(production: Any | None, trained_onnx_sha256: str) -> str:
    """Which model clusters: the production version, which need not hold this run's model (the gate)."""
    if production is None:
        return "none in production"
    if production.run_metadata.get("onnx_sha256") == trained_onnx_sha256:
        return f"production version {production.number}, the model of this training run"
    return (
        f"production version {production.number}, not this run's model (it did not beat production), "
        "so the P@1 above is not the clustering model's"
    )


def summary_table(training: Any, clustering: Any | None) -> Table:
    metrics: dict[str, float] = output(training, "evaluate", ArtifactName.METRICS).load()
    threshold: float = output(training, "evaluate", ArtifactName.THRESHOLD).load()
    table = Table(title="replearn demo", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    overlap = metrics.get("groups/test_in_train", 0.0)
    protocol = "test groups unseen in training" if overlap == 0 else f"{overlap:.0f} test groups also in train"
    seen = metrics.get("seen/precision_at_1", 0.0)
    table.add_row(f"P@1, seen classes (test vs train gallery; {protocol})", f"{seen:.3f}")
    table.add_row("P@1, unseen classes", f"{metrics.get('unseen/precision_at_1', 0.0):.3f}")
    table.add_row("pair threshold (max F1 on val pairs)", f"{threshold:.3f}")
    resolution, cluster_threshold = metrics.get("cluster/resolution"), metrics.get("cluster/threshold")
    if resolution is not None and cluster_threshold is not None:
        table.add_row(
            "clusters: threshold, Louvain resolution (max F1 on val)", f"{cluster_threshold:.3f}, {resolution:g}"
        )
    if clustering is not None:
        run = output(clustering, "cluster", ArtifactName.CLUSTER_RUN).load()
        # The materializer's metadata: loading the artifact would copy and hash the model file again.
        trained_sha256 = str(output(training, "export", ArtifactName.ONNX_MODEL).run_metadata["sha256"])
        note = clustering_model_note(production_version(MODEL_NAME), trained_sha256)
        table.add_row("model used for clustering", note)
        if run["new_images"] == 0 and run["images"] > 0:
            table.add_row("inbox images clustered", f"0 new of {run['images']}: all clustered by earlier runs")
        else:
            table.add_row("inbox images clustered", f"{run['new_images']} new of {run['images']}")
            table.add_row("clusters found / unclustered", f"{run['new_clusters']} / {run['unclustered']}")
        if "labels/pairwise_f1" in run:
            table.add_row("clusters vs true classes: pairwise F1", f"{run['labels/pairwise_f1']:.3f}")
    return table


def latest_report(cluster_run: dict[str, Any]) -> str:
    """This run's report, or when it had nothing new, the newest one in its catalogue's OUT ("" if none)."""
    if cluster_run["report"]:
        return str(cluster_run["report"])
    catalogue = cluster_run.get("catalogue")
    reports = sorted(Path(catalogue).glob("runs/run-*/report.html")) if catalogue else []
    return str(reports[-1]) if reports else ""


def paths(training: Any, clustering: Any | None) -> list[tuple[str, str]]:
    evaluate_dir = Path(str(training.steps["evaluate"].run_metadata.get("report_dir", "")))
    found = [
        ("ONNX model", output(training, "export", ArtifactName.ONNX_MODEL).load().path),
        ("metrics", str(evaluate_dir / "metrics.json")),
        ("evaluation plots", str(evaluate_dir / "plots")),
        ("Data Docs", str(Path(str(training.steps["validate"].run_metadata.get("data_docs", ""))) / "index.html")),
    ]
    if clustering is not None:
        report = latest_report(output(clustering, "cluster", ArtifactName.CLUSTER_RUN).load())
        found.append(("clustering report", report or "(nothing clustered yet: the inbox is empty)"))
    return found


def crop_report(report: Path, target: Path) -> None:
    """The montages of the report's first clusters (lowest ids) stacked with their titles: a picture for the README.

    The montages are inside the page (data URIs), found by their alt text, "typical members of cluster 12".
    """
    found: list[tuple[int, str, Image.Image]] = []
    for alt, image in embedded_images(report.read_text(encoding="utf-8")):
        kind, _, number = alt.partition(" members of cluster ")
        if number.isdigit():
            found.append((int(number), kind, image.convert("RGB")))
    montages = sorted(found, key=lambda montage: montage[:2])[:REPORT_CROP_CLUSTERS]
    if not montages:
        return
    width = max(image.width for _, _, image in montages)
    caption = 18
    canvas = Image.new("RGB", (width, sum(image.height + caption for _, _, image in montages)), "white")
    draw = ImageDraw.Draw(canvas)
    top = 0
    for cluster_id, _, image in montages:
        draw.text((4, top + 3), f"cluster {cluster_id}", fill="black")
        canvas.paste(image, (0, top + caption))
        top += image.height + caption
    canvas.save(target)


def copy_pictures(found: dict[str, str], docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    plots = Path(found["evaluation plots"])
    for name in ("similarity_histograms.png", "embedding_map.png", "threshold_curves.png"):
        if (plots / name).is_file():
            shutil.copyfile(plots / name, docs / name)
    report = Path(found.get("clustering report", ""))
    if report.is_file():
        crop_report(report, docs / "cluster_report.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, help="Copy the demo's pictures into this folder.")
    args = parser.parse_args()
    training = last_run("training")
    if training is None or training.status.value != "completed":
        raise SystemExit("error: no completed training run yet: run `zenml pipeline run training` first")
    clustering = last_run("clustering")
    clustering = clustering if clustering is not None and clustering.status.value == "completed" else None
    console.print(summary_table(training, clustering))
    console.print(stage_table(*(run for run in (training, clustering) if run is not None)))
    found = paths(training, clustering)
    for name, path in found:
        console.print(f"[bold]{name}:[/] {path}", highlight=False, soft_wrap=True)
    if args.docs:
        copy_pictures(dict(found), args.docs)


if __name__ == "__main__":
    main()
