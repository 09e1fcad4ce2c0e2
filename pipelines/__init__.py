"""ZenML pipelines; `zenml pipeline run pipelines.training` works through these exports."""

from pipelines.clustering import clustering
from pipelines.training import training

__all__ = ["clustering", "training"]
