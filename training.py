"""Lets the literal `zenml pipeline run training` work from the repository root.

ZenML imports the source `training` as a module and needs that module to be the pipeline,
so this module replaces itself in sys.modules by the pipeline, with zenml_config.yaml applied,
after checking that there is data to train on (where the run's params file, or the `-c` file's,
points) and taking the one-run-at-a-time lock.
"""

import sys

from pipelines.preflight import apply_run_config, preflight, require_training_data
from pipelines.run_lock import hold_run_lock
from pipelines.training import training

preflight(require_training_data)
hold_run_lock()
sys.modules[__name__] = apply_run_config(training)
