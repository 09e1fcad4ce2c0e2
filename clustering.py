"""Lets the literal `zenml pipeline run clustering` work from the repository root (see training.py)."""

import sys

from pipelines.clustering import clustering
from pipelines.preflight import RUN_CONFIG, preflight, require_production_model
from pipelines.run_lock import hold_run_lock

preflight(require_production_model)
hold_run_lock()
sys.modules[__name__] = clustering.with_options(config_path=str(RUN_CONFIG))
