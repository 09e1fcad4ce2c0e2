"""Open either kind of model for evaluation, a PyTorch checkpoint or an exported ONNX file, and embed labelled files.

Evaluating the ONNX file checks what will be deployed; evaluating the checkpoint needs no export
first. Both embedders offer the same two operations (embedding/onnx.py, embedding/torch.py), so one
loop (embedding/batches.py) serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from replearn.config import Config
from replearn.embedding.batches import Embedder, embed_paths
from replearn.errors import UserError
from replearn.similarity import unit_rows


@dataclass
class LoadedModel:
    """An embedder plus what the model file says about itself."""

    embedder: Embedder
    kind: str  # "onnx" or "checkpoint"
    threshold: float | None  # the calibrated threshold stored in an ONNX file's metadata


def is_onnx(model_path: Path) -> bool:
    """ONNX files are recognised by their extension; anything else is read as a PyTorch checkpoint.

    >>> is_onnx(Path("model.ONNX")), is_onnx(Path("best.pt"))
    (True, False)
    """
    return model_path.suffix.lower() == ".onnx"


def open_model(model_path: Path, config: Config) -> LoadedModel:
    """The embedder for `model_path`: onnxruntime with the `embed` settings, or torch on `train.devices`.

    torch is imported only for a checkpoint, so `replearn compare` with an ONNX model runs without it.
    """
    if not model_path.is_file():
        raise UserError(f"model {model_path} does not exist")
    if is_onnx(model_path):
        from replearn.embedding.onnx import OnnxEmbedder

        onnx = OnnxEmbedder(model_path, provider=config.embed.provider, threads=config.embed.threads)
        return LoadedModel(onnx, "onnx", onnx.metadata.threshold)
    from replearn.embedding.torch import TorchEmbedder
    from replearn.training.distributed import RankInfo, select_device
    from replearn.training.model import load_model

    device = select_device(config.train.devices, RankInfo.from_env())
    model, trained_config, _ = load_model(model_path, device)
    return LoadedModel(TorchEmbedder(model, trained_config.preprocess.resize, device), "checkpoint", None)


def embed_files(embedder: Embedder, paths: list[Path], batch_size: int, description: str = "embedding") -> np.ndarray:
    """(N, D) unit-length embeddings of `paths`, in order; a file that cannot be decoded is an error naming it.

    Evaluation needs every labelled image, so nothing is skipped.
    """
    if not paths:
        raise UserError("no images to embed")
    done = embed_paths(embedder, paths, batch_size, on_error="raise", description=description)
    return unit_rows(done.embeddings)
