"""Thin ZenML steps, one per stage: each calls one replearn library function and returns typed artifacts.

Steps import the library inside their body, so that building a pipeline (and a fully cached run)
never imports torch, onnx or Great Expectations; the library files are in each step's cache key.
"""

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
