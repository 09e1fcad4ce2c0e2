"""Lets the literal `zenml pipeline run clustering` work from the repository root (see training.py).

On remote orchestrators the clustering steps run in the Dockerfile's small `inference` target
(onnxruntime, no torch) instead of the `training` image that zenml_config.yaml names for both.
"""

import sys

from pipelines.clustering import clustering
from pipelines.preflight import RUN_CONFIG, preflight, require_production_model
from pipelines.run_lock import hold_run_lock

INFERENCE_IMAGE = {"docker": {"parent_image_build_config": {"build_options": {"target": "inference"}}}}

preflight(require_production_model)
hold_run_lock()
sys.modules[__name__] = clustering.with_options(config_path=str(RUN_CONFIG), settings=INFERENCE_IMAGE)
