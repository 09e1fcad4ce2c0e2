"""Embed a list of image files with either kind of model: a PyTorch checkpoint or an exported ONNX file.

Evaluating the ONNX file checks what will be deployed; evaluating the checkpoint needs no export
first. Both sides offer the same two operations (decode one file into the model's input, embed a
batch), so one loop with one progress bar serves both. torch is imported only for checkpoints, so
`replearn compare` with an ONNX model runs in a torch-free image.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from replearn.config import Config, ResizeConfig
from replearn.console import make_progress
from replearn.data.images import image_to_array, load_image
from replearn.errors import UserError
from replearn.similarity import unit_rows


class Embedder(Protocol):
    """What the embedding loop needs from a model: decode one file, embed one batch."""

    def load(self, path: Path) -> np.ndarray: ...

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray: ...


class TorchEmbedder:
    """A trained checkpoint behind the OnnxEmbedder interface; images resized as the checkpoint was trained."""

    def __init__(self, checkpoint: Path, devices: str) -> None:
        import torch

        from replearn.training.checkpoint import load_model
        from replearn.training.distributed import RankInfo, select_device

        self._torch = torch
        self.device = select_device(devices, RankInfo.from_env())
        self.model, trained_config, self.classes = load_model(checkpoint, self.device)
        self.resize: ResizeConfig = trained_config.preprocess.resize

    def load(self, path: Path) -> np.ndarray:
        return image_to_array(load_image(path, self.resize))

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            output = self.model(self._torch.from_numpy(batch).to(self.device))
        return output.float().cpu().numpy()


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
    """The embedder for `model_path`: onnxruntime with the `embed` settings, or torch on `train.devices`."""
    if not model_path.is_file():
        raise UserError(f"model {model_path} does not exist")
    if is_onnx(model_path):
        from replearn.embedding.onnx import OnnxEmbedder

        onnx = OnnxEmbedder(model_path, provider=config.embed.provider, threads=config.embed.threads)
        return LoadedModel(onnx, "onnx", onnx.metadata.threshold)
    return LoadedModel(TorchEmbedder(model_path, config.train.devices), "checkpoint", None)


def embed_files(embedder: Embedder, paths: list[Path], batch_size: int, description: str = "embedding") -> np.ndarray:
    """(N, D) float32 embeddings of `paths`, in order. Files are decoded on threads (Pillow releases the GIL).

    A file that cannot be decoded is an error naming it: evaluation needs every labelled image.
    """

    def decode(path: Path) -> np.ndarray:
        try:
            return embedder.load(path)
        except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError, ...
            raise UserError(f"cannot read image {path}: {type(error).__name__}: {error}") from None

    chunks: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, make_progress() as progress:
        task = progress.add_task(description, total=len(paths), unit="images")
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            chunks.append(embedder.embed_arrays(np.stack(list(pool.map(decode, batch)))))
            progress.advance(task, len(batch))
    if not chunks:
        raise UserError("no images to embed")
    return unit_rows(np.concatenate(chunks))
