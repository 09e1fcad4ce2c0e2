from __future__ import annotations

from typing import Annotated, Any

from zenml import log_metadata, step

from steps.artifacts import ArtifactName, FolderRef, ModelFile, ModelFileMaterializer
from steps.stage_config import library_cache_policy, rebuild, stage_dir


@step(
    output_materializers={ArtifactName.CHECKPOINT: ModelFileMaterializer},
    cache_policy=library_cache_policy("train"),
)
def train(
    config: dict[str, Any], preprocessed: FolderRef, outputs_dir: str
) -> tuple[Annotated[ModelFile, ArtifactName.CHECKPOINT], Annotated[dict[str, Any], ArtifactName.TRAIN_SUMMARY]]:
    """Train on the seen train split; with train.nproc_per_node > 1 the same call launches DDP workers."""
    from replearn.stages.train import stage

    out_dir = stage_dir(outputs_dir, "train", config, preprocessed.digest)
    result = stage(rebuild(config), preprocessed.checked(), out_dir, force=True)
    # The summary (time, images/s, final loss, best val P@1, device, precision) as searchable metadata;
    # the per-iteration curve stays in metrics.csv beside the checkpoint.
    log_metadata(metadata={key: value for key, value in result.summary.items() if value is not None})
    return ModelFile.of(result.best_checkpoint), result.summary
