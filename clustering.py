"""Lets the literal `zenml pipeline run clustering` work from the repository root (see training.py).

On remote orchestrators the clustering steps run in the Dockerfile's small `inference` target
(onnxruntime, no torch) instead of the `training` image that zenml_config.yaml names for both.
"""

import sys

from pipelines.clustering import INFERENCE_IMAGE, clustering
from pipelines.preflight import apply_run_config, preflight, require_production_model
from pipelines.run_lock import hold_run_lock
from steps.run_status import record_preflight_failure

preflight(require_production_model, on_error=record_preflight_failure)
hold_run_lock()
sys.modules[__name__] = apply_run_config(clustering, settings=INFERENCE_IMAGE)
