from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

from zenml import log_metadata, save_artifact, step
from zenml.types import MarkdownString

from replearn.atomic import atomic_path
from replearn.errors import UserError
from steps.artifacts import ArtifactName, FolderRef
from steps.stage_config import digest, library_cache_policy, rebuild, stage_dir


def seed_manifest_cache(out_dir: Path) -> None:
    """Start a new report folder with the newest earlier manifest, the cache of unchanged files.

    Every data version gets a folder of its own, so without this each added image would have every
    file read and hashed again. The manifest cache itself decides which rows still hold (same path,
    size and mtime, same max_pixels).
    """
    from replearn.data.validation import MANIFEST_NAME

    if (out_dir / MANIFEST_NAME).exists():
        return
    earlier = sorted(out_dir.parent.glob(f"*/{MANIFEST_NAME}"), key=lambda path: path.stat().st_mtime)
    if earlier:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / MANIFEST_NAME) as temporary:
            shutil.copyfile(earlier[-1], temporary)


@step(
    cache_policy=library_cache_policy("validate"),
)
def validate(
    config: dict[str, Any], data_dir: str, data_version: str, outputs_dir: str
) -> tuple[Annotated[FolderRef, ArtifactName.DATASET], Annotated[MarkdownString, ArtifactName.VALIDATION_REPORT]]:
    """Validate the class folders; `data_version` (DVC hash and stat fingerprint) keys the cache on the data.

    The table of checks is a Markdown artifact the dashboard shows. Data that fails validation fails the
    step, which then returns nothing: the table is saved first, so the failed step shows why it failed.
    """
    from replearn.data.validation import report_markdown
    from replearn.stages.validate import stage

    out_dir = stage_dir(outputs_dir, "validate", config, data_version)
    seed_manifest_cache(out_dir)
    result = stage(rebuild(config), Path(data_dir), out_dir)
    failed = [check.name for check in result.checks if not check.success]
    log_metadata(
        metadata={
            "valid": result.valid,
            "files": result.stats.files,
            "cached_files": result.stats.cached,
            "good_files": len(result.good),
            "failed_checks": ", ".join(failed) or "none",
            "data_docs": str(out_dir / "data_docs"),
        }
    )
    table = MarkdownString(report_markdown(result))
    if not result.valid:
        save_artifact(table, name=ArtifactName.VALIDATION_REPORT)
        raise UserError(f"{data_dir} failed validation ({', '.join(failed)}); see {result.summary_path}")
    # Downstream caching follows the content: touching files reruns validation, not training. So the
    # list of good files that preprocessing reads is copied to a folder named by that content too.
    content = digest(sorted(zip(result.good["path"], result.good["sha256"], strict=True)))
    file_list = stage_dir(outputs_dir, "good_files", content) / result.good_files_path.name
    with atomic_path(file_list) as temporary:
        shutil.copyfile(result.good_files_path, temporary)
    return FolderRef(path=data_dir, digest=content, file_list=str(file_list)), table
