from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from steps.artifacts import ArtifactName, FolderRef, ModelFile, PlotFiles, PlotFilesMaterializer
from steps.stage_config import library_cache_policy, rebuild, stage_dir


@step(
    cache_policy=library_cache_policy("evaluate"),
    output_materializers={ArtifactName.EVALUATION_PLOTS: PlotFilesMaterializer},
)
def evaluate(
    config: dict[str, Any], checkpoint: ModelFile, preprocessed: FolderRef, outputs_dir: str
) -> tuple[
    Annotated[dict[str, float], ArtifactName.METRICS],
    Annotated[float, ArtifactName.THRESHOLD],
    Annotated[float, ArtifactName.RESOLUTION],
    Annotated[float, ArtifactName.CLUSTER_THRESHOLD],
    Annotated[PlotFiles, ArtifactName.EVALUATION_PLOTS],
]:
    """kNN metrics of seen and unseen classes, plots, the pair threshold, the cluster stage's calibration.

    The headline metrics are step metadata and the plots an artifact of images, so the dashboard shows
    both; every metric is in the metrics artifact.
    """
    from replearn.evaluation.evaluate import headline_metrics
    from replearn.stages.evaluate import stage

    out_dir = stage_dir(outputs_dir, "evaluate", config, checkpoint.sha256, preprocessed.digest)
    result = stage(rebuild(config), Path(checkpoint.path), preprocessed.checked(), out_dir, force=True)
    log_metadata(metadata={**headline_metrics(result.metrics), "report_dir": str(out_dir)})
    return (
        dict(result.metrics),
        float(result.threshold),
        float(result.resolution),
        float(result.cluster_threshold),
        PlotFiles(paths=[str(path) for path in result.plots]),
    )
