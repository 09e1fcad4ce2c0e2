from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step
from zenml.types import HTMLString

from steps.artifacts import ArtifactName, ModelFile, ModelFileMaterializer
from steps.production import require_production_version
from steps.stage_config import rebuild


@step(enable_cache=False, output_materializers={ArtifactName.PRODUCTION_MODEL: ModelFileMaterializer})
def load_production_model(model_name: str) -> Annotated[ModelFile, ArtifactName.PRODUCTION_MODEL]:
    """The ONNX file of the model version in production: what scheduled clustering runs use."""
    model_file: ModelFile = require_production_version(model_name).get_artifact(ArtifactName.ONNX_MODEL).load()
    return model_file


@step(enable_cache=False)
def cluster(
    config: dict[str, Any], onnx_model: ModelFile, inbox_dir: str, clusters_dir: str
) -> Annotated[dict[str, Any], ArtifactName.CLUSTER_RUN]:
    """Cluster the inbox's new images into the one catalogue; never cached (inbox and catalogue change).

    The catalogue outlives promotions: the first run with a new production model migrates it to the
    new model's space (replearn/catalogue/migration.py), so every id and name a user has seen survives.
    """
    from replearn.stages.cluster import stage

    settings = rebuild(config)
    catalogue = Path(clusters_dir)
    run = stage(settings, Path(onnx_model.path), Path(inbox_dir), catalogue)
    summary: dict[str, Any] = {
        "run": run.run or 0,  # the catalogue's run number; 0 when there was nothing new
        "images": run.images,
        "new_images": run.new_images,
        "assigned_to_existing": run.assigned_to_existing,
        "new_clusters": run.new_clusters,
        "unclustered": run.unclustered,
        "failures": len(run.failures),
        "report": str(run.run_dir / "report.html") if run.run_dir else "",
        "catalogue": str(catalogue),
    } | {f"labels/{key}": value for key, value in run.metrics.items()}
    if run.migration:  # this run's model was new to the catalogue
        migration = run.migration
        summary |= {"migration/agreement": migration.agreement, "migration/seconds": migration.seconds}
        summary |= {"migration/images": migration.images, "migration/files_gone": migration.missing}
    log_metadata(metadata=summary)
    return summary


@step(enable_cache=False)
def report(cluster_run: dict[str, Any]) -> Annotated[HTMLString, ArtifactName.CLUSTER_REPORT]:
    """The run's report.html, shown by the ZenML dashboard; an empty inbox gives a one-line page."""
    path = Path(cluster_run["report"]) if cluster_run["report"] else None
    if path is None or not path.is_file():
        return HTMLString(f"<p>Nothing new to cluster: {cluster_run['images']} images, all already clustered.</p>")
    return HTMLString(path.read_text(encoding="utf-8"))
