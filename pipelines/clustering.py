"""The clustering pipeline: the production ONNX model -> cluster the inbox -> report.

Every step's failure (after the retries zenml_config.yaml gives it) is recorded in the run status of
outputs/zenml/clusters and posted to the stack's alerter; the report step's success records a good run
(steps/run_status.py).
"""

from __future__ import annotations

from zenml import pipeline

from pipelines.inputs import MODEL_NAME, load_run_config
from replearn.stages import STAGES
from steps import cluster, load_production_model, report
from steps.run_status import clusters_dir, record_run_failure, record_run_success
from steps.stage_config import sections

# On remote orchestrators the clustering steps run in the Dockerfile's small `inference` target
# (onnxruntime, no torch) instead of the `training` image that zenml_config.yaml names for both.
INFERENCE_IMAGE = {"docker": {"parent_image_build_config": {"build_options": {"target": "inference"}}}}


@pipeline(enable_cache=False, on_failure=record_run_failure)
def clustering(params_file: str = "params.yaml", overrides: list[str] | None = None) -> None:
    """Group the new images of data.inbox_dir with the production model; cluster ids stay stable across runs."""
    config = load_run_config(params_file, overrides)
    onnx_model = load_production_model(model_name=MODEL_NAME)
    cluster_run = cluster(
        config=sections(config, *STAGES["cluster"].config_keys),
        onnx_model=onnx_model,
        inbox_dir=str(config.data.inbox_dir),
        clusters_dir=str(clusters_dir(config)),
    )
    report.with_options(on_success=record_run_success)(cluster_run=cluster_run)
