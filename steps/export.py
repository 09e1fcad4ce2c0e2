from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from steps.artifacts import ArtifactName, FolderRef, ModelFile, ModelFileMaterializer
from steps.stage_config import library_cache_policy, rebuild, stage_dir


@step(
    output_materializers={ArtifactName.ONNX_MODEL: ModelFileMaterializer},
    cache_policy=library_cache_policy("export"),
)
def export(
    config: dict[str, Any],
    checkpoint: ModelFile,
    threshold: float,
    resolution: float,
    cluster_threshold: float,
    preprocessed: FolderRef,
    outputs_dir: str,
) -> Annotated[ModelFile, ArtifactName.ONNX_MODEL]:
    """ONNX with the calibrated thresholds and resolution in its metadata, parity-checked on real images."""
    from replearn.artifacts.threshold import Calibration
    from replearn.stages.export import stage

    out_dir = stage_dir(
        outputs_dir, "export", config, checkpoint.sha256, threshold, resolution, cluster_threshold, preprocessed.digest
    )
    result = stage(
        rebuild(config),
        Path(checkpoint.path),
        out_dir / "model.onnx",
        images_dir=preprocessed.checked(),
        calibration=Calibration(threshold, resolution, cluster_threshold),
    )
    log_metadata(
        metadata={"exporter": result.exporter, "max_abs_diff": result.parity.max_abs_diff, "path": str(result.path)}
    )
    return ModelFile.of(result.path)
