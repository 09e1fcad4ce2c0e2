from __future__ import annotations

import logging
from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.enums import ModelStages

from steps.artifacts import ArtifactName, ModelFile
from steps.production import production_version

log = logging.getLogger(__name__)
GATE_METRIC = "seen/precision_at_1"
LOGGED_METRICS = (GATE_METRIC, "unseen/precision_at_1", "seen/map_at_r", "unseen/map_at_r", "threshold")


def production_score(model_name: str) -> float | None:
    """P@1 of the current production version, or None when there is none."""
    version = production_version(model_name)
    score = version.run_metadata.get(GATE_METRIC) if version is not None else None
    return float(score) if isinstance(score, (int, float)) else None


@step(enable_cache=False)
def register(
    metrics: dict[str, float], threshold: float, onnx_model: ModelFile
) -> Annotated[bool, ArtifactName.PROMOTED]:
    """Record the metrics on this run's model version; promote it only when it beats production on P@1.

    Never cached, because every run creates a model version and each must carry its metrics. A rerun
    with nothing changed scores exactly what production scores, so it is not promoted.
    """
    model = get_step_context().model
    metadata = {key: metrics[key] for key in LOGGED_METRICS if key in metrics} | {"threshold": threshold}
    metadata["onnx_sha256"] = onnx_model.sha256
    log_metadata(metadata=metadata, infer_model=True)
    current = production_score(model.name)
    candidate = metrics.get(GATE_METRIC, 0.0)
    promote = current is None or candidate > current
    if promote:
        model.set_stage(ModelStages.PRODUCTION, force=True)
    log.info(
        "model %s version %s: %s %.4f vs production %s: %s",
        model.name,
        model.version,
        GATE_METRIC,
        candidate,
        "none" if current is None else f"{current:.4f}",
        "promoted to production" if promote else "not promoted",
    )
    return promote
