from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, step

from replearn.artifacts.hashing import sha256_file
from steps.artifacts import ArtifactName, FolderRef
from steps.stage_config import library_cache_policy, rebuild, stage_dir


@step(
    cache_policy=library_cache_policy("preprocess"),
)
def preprocess(
    config: dict[str, Any], dataset: FolderRef, outputs_dir: str
) -> Annotated[FolderRef, ArtifactName.PREPROCESSED]:
    """Resized copies and splits of the files validation kept, in a folder keyed by the settings (incremental)."""
    from replearn.data.splits import SPLITS_FILE
    from replearn.stages.preprocess import stage

    out_dir = stage_dir(outputs_dir, "preprocess", config)
    only = Path(dataset.file_list) if dataset.file_list else None
    result = stage(rebuild(config), dataset.checked(), out_dir, only)
    log_metadata(
        metadata={
            "images": result.images,
            "written": result.written,
            "removed": result.removed,
            "left_out": result.left_out,
        }
    )
    return FolderRef(path=str(out_dir), digest=sha256_file(out_dir / SPLITS_FILE))
