"""The training pipeline: validate -> preprocess -> train -> evaluate -> export -> register."""

from __future__ import annotations

from zenml import Model, pipeline

from pipelines.inputs import MODEL_NAME, load_run_config, require_data
from replearn.data.version import data_version
from replearn.stages import STAGES
from steps import evaluate, export, preprocess, register, train, validate
from steps.stage_config import sections


@pipeline(
    model=Model(name=MODEL_NAME, description="replearn image embedding model (ONNX), with its kNN metrics"),
    enable_cache=True,
)
def training(params_file: str = "params.yaml", overrides: list[str] | None = None) -> None:
    """Train, evaluate and export an embedding model from data.raw_dir; promote it if it beats production."""
    config = load_run_config(params_file, overrides)
    data_dir = require_data(config.data.raw_dir)
    outputs = str(config.data.outputs_dir)
    dataset, _ = validate(
        config=sections(config, *STAGES["validate"].config_keys),
        data_dir=str(data_dir),
        data_version=data_version(data_dir),
        outputs_dir=outputs,
    )
    preprocessed = preprocess(
        config=sections(config, *STAGES["preprocess"].config_keys), dataset=dataset, outputs_dir=outputs
    )
    checkpoint, _ = train(
        config=sections(config, *STAGES["train"].config_keys), preprocessed=preprocessed, outputs_dir=outputs
    )
    metrics, threshold, resolution, cluster_threshold, _ = evaluate(
        config=sections(config, *STAGES["evaluate"].config_keys),
        checkpoint=checkpoint,
        preprocessed=preprocessed,
        outputs_dir=outputs,
    )
    onnx_model = export(
        config=sections(config, *STAGES["export"].config_keys),
        checkpoint=checkpoint,
        threshold=threshold,
        resolution=resolution,
        cluster_threshold=cluster_threshold,
        preprocessed=preprocessed,
        outputs_dir=outputs,
    )
    register(metrics=metrics, threshold=threshold, onnx_model=onnx_model)
