"""Thin ZenML steps, one per stage: each calls one replearn library function and returns typed artifacts."""

from steps.cluster import cluster, load_production_model, report
from steps.evaluate import evaluate
from steps.export import export
from steps.preprocess import preprocess
from steps.register import register
from steps.train import train
from steps.validate import validate

__all__ = [
    "cluster",
    "evaluate",
    "export",
    "load_production_model",
    "preprocess",
    "register",
    "report",
    "train",
    "validate",
]
