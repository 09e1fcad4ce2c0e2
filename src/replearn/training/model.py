"""The embedding model: CNN feature map -> 1x1 conv -> 2-D positional embeddings -> transformer -> L2 norm.

The backbone (a torchvision ResNet, ConvNeXt, EfficientNet or RegNet trunk: training/backbones.py)
runs on an input larger than it needs for a single vector, so it yields a feature map whose cells
look at different parts of the image; the transformer lets those cells attend to each other before
they are pooled into one embedding. Mean/std normalisation, with the statistics of the backbone's
ImageNet weights, lives inside the model, so every runtime (training, evaluation, ONNX) feeds plain
float32 RGB in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from replearn.artifacts.checkpoint import read_checkpoint
from replearn.config import Config, ModelConfig, build_config
from replearn.training.backbones import build_backbone, imagenet_statistics

# Largest feature map side the positional table covers: 32 cells is a 1024 px input at stride 32.
MAX_GRID = 32


class EmbeddingModel(nn.Module):
    """Float32 RGB images in [0, 1], (B, 3, H, W) -> L2-normalised embeddings (B, embedding_dim)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        mean, std = imagenet_statistics(config.backbone.name)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.backbone, channels = build_backbone(config.backbone)
        self.project = nn.Conv2d(channels, config.d_model, kernel_size=1)
        self.position = nn.Parameter(torch.zeros(1, config.d_model, MAX_GRID, MAX_GRID))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model)) if config.pooling == "cls" else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.heads,
            dim_feedforward=4 * config.d_model,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # No nested tensors: they only pay off with padding masks, and they do not export to ONNX.
        self.encoder = nn.TransformerEncoder(
            layer, config.layers, norm=nn.LayerNorm(config.d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(config.d_model, config.embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.project(self.backbone((images - self.mean) / self.std))
        height, width = features.shape[-2:]
        if height > MAX_GRID or width > MAX_GRID:
            raise ValueError(f"feature map {height}x{width} exceeds the positional table ({MAX_GRID}x{MAX_GRID})")
        tokens = (features + self.position[:, :, :height, :width]).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        encoded = self.encoder(tokens)
        pooled = encoded[:, 0] if self.cls_token is not None else encoded.mean(dim=1)
        return F.normalize(self.head(pooled), dim=1)


def build_model(model_config: ModelConfig) -> EmbeddingModel:
    """The embedding model described by the config, with the backbone's starting weights loaded."""
    return EmbeddingModel(model_config)


def load_model(path: Path | str, device: str | torch.device = "cpu") -> tuple[EmbeddingModel, Config, list[str]]:
    """The trained model (eval mode, on `device`), the config it was trained with, and its class list.

    The backbone is rebuilt without its starting weights (they are in the state_dict anyway), so
    loading never needs the ImageNet file or the network.
    """
    payload = read_checkpoint(path)
    config = build_config(payload["config"], source=f"the config inside {path}")
    model_config = config.train.model.model_copy(deep=True)
    model_config.backbone.weights = "none"
    model = build_model(model_config)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), config, list(payload["classes"])
