"""params.yaml of the end-to-end tests that run every stage: a tiny model, three iterations, 32 px."""

from __future__ import annotations

from typing import Any

TINY_STAGE_PARAMS: dict[str, Any] = {
    "validate": {"workers": 1},
    "preprocess": {"resize": {"size": 32}, "workers": 2},
    "train": {
        "model": {"d_model": 16, "layers": 1, "heads": 2, "embedding_dim": 8},
        "classes_per_batch": 4,
        "images_per_class": 2,
        "iterations": 3,
        "checkpoint_every": 3,
        "warmup_iterations": 0,
        "loader_workers": 0,
        "precision": "fp32",
        "devices": "cpu",
    },
    "evaluate": {"embedding_map": "pca", "worst_queries": 1},
    # TorchScript exports a tiny model in about half the time of dynamo; the exporter is not under test here.
    "export": {"exporter": "torchscript", "opset": 17, "parity_images": 4},
    "cluster": {"min_size": 2},
}
