"""A PyTorch model behind the same two operations as the ONNX embedder (decode one file, embed a batch).

Evaluating a checkpoint needs no export first. This module imports torch, so only code that holds a
checkpoint imports it (evaluation, lazily); the torch-free stages never do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from replearn.config import ResizeConfig
from replearn.data.images import image_to_array, load_image


class TorchEmbedder:
    """A loaded model on `device`; images are resized as the model was trained (`resize`)."""

    def __init__(self, model: torch.nn.Module, resize: ResizeConfig, device: torch.device) -> None:
        self.model, self.resize, self.device = model, resize, device

    def load(self, path: Path) -> np.ndarray:
        return image_to_array(load_image(path, self.resize))

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            output = self.model(torch.from_numpy(batch).to(self.device))
        return output.float().cpu().numpy()
