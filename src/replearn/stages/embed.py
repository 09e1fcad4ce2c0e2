"""The embed stage: embed a folder of images with the ONNX model alone, no torch (embedding/onnx.py)."""

from __future__ import annotations

from pathlib import Path

from replearn.config import Config
from replearn.embedding.onnx import EmbeddingResult, embed_images


def stage(config: Config, model: Path, images_dir: Path, out_dir: Path, force: bool = False) -> EmbeddingResult:
    """Embeddings, path index, failures.csv and embed.json in OUT_DIR; unreadable images are skipped and listed."""
    return embed_images(config.embed, Path(model), Path(images_dir), Path(out_dir), force=force)
