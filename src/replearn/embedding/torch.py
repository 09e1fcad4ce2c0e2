"""A PyTorch model behind the same two operations as the ONNX embedder (decode one file, embed a batch).

Evaluating a checkpoint needs no export first, and training's validation embeds its in-memory batches
with the same `embed_batch`. This module imports torch, so only code that holds a model imports it
(training, and evaluation lazily); the torch-free stages never do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from replearn.config import ResizeConfig
from replearn.data.images import image_to_array, load_image


def embed_batch(model: torch.nn.Module, batch: np.ndarray | torch.Tensor, device: torch.device) -> np.ndarray:
    """(B, D) float32 embeddings of one batch of model inputs (B, 3, S, S), float in [0, 1].

    Runs without autograd and in whatever mode the model is in: the caller puts it in eval mode.
    """
    with torch.inference_mode():
        output = model(torch.as_tensor(batch).to(device))
    return output.float().cpu().numpy()


class TorchEmbedder:
    """A loaded model on `device`; images are resized as the model was trained (`resize`)."""

    def __init__(self, model: torch.nn.Module, resize: ResizeConfig, device: torch.device) -> None:
        self.model, self.resize, self.device = model, resize, device

    def load(self, path: Path) -> np.ndarray:
        return image_to_array(load_image(path, self.resize))

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        return embed_batch(self.model, batch, self.device)
