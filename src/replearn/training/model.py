"""The embedding model: ResNet feature map -> 1x1 conv -> 2-D positional embeddings -> transformer -> L2 norm.

The ResNet runs on an input larger than it needs for a single vector, so it yields a feature map
whose cells look at different parts of the image; the transformer lets those cells attend to each
other before they are pooled into one embedding. Mean/std normalisation lives inside the model,
so every runtime (training, evaluation, ONNX) feeds plain float32 RGB in [0, 1].
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from replearn.artifacts.checkpoint import load_torch_dict, read_checkpoint
from replearn.config import BackboneConfig, Config, ModelConfig, build_config
from replearn.data.images import NORMALIZE_MEAN, NORMALIZE_STD
from replearn.errors import UserError

log = logging.getLogger(__name__)

# Largest feature map side the positional table covers: 32 cells is a 1024 px input at stride 32.
MAX_GRID = 32

_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
}


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision's own download would cache the ImageNet weights of `name`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_WEIGHTS[name].url)


def read_backbone_state(config: BackboneConfig) -> dict[str, torch.Tensor] | None:
    """The backbone's starting weights: None (random), torchvision's ImageNet file, or a state_dict file.

    Nothing is downloaded: run time has no network, so a missing file is a UserError that says
    where to put it.
    """
    if config.weights == "none":
        return None
    if config.weights == "imagenet":
        path = imagenet_weights_path(config.name)
        if not path.is_file():
            raise UserError(
                f"train.model.backbone.weights=imagenet needs {path}, which is missing (no download at run time); "
                f"fetch {_WEIGHTS[config.name].url} on a machine with network and copy it there, "
                "or set train.model.backbone.weights to a state_dict file, or to none"
            )
    else:
        path = Path(config.weights)
        if not path.is_file():
            raise UserError(f"train.model.backbone.weights: {path} does not exist (expected none, imagenet or a file)")
    state = load_torch_dict(path, "a loadable state_dict")
    return {key: value for key, value in state.items() if not key.startswith("fc.")}


def build_backbone(config: BackboneConfig) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet without pooling and fc, and the channels of its feature map."""
    resnet = getattr(torchvision.models, config.name)(weights=None)
    state = read_backbone_state(config)
    channels = resnet.fc.in_features
    del resnet.fc
    if state is not None:
        try:
            resnet.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise UserError(f"{config.weights} does not fit a {config.name}: {str(error)[:500]}") from None
        log.info("backbone %s starts from %s", config.name, config.weights)
    if config.output_stride == 16:
        for module in resnet.layer4[0].modules():
            if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                module.stride = (1, 1)
    layers = [resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool]
    layers += [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]
    return nn.Sequential(*layers), channels


class EmbeddingModel(nn.Module):
    """Float32 RGB images in [0, 1], (B, 3, H, W) -> L2-normalised embeddings (B, embedding_dim)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(NORMALIZE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(NORMALIZE_STD).view(1, 3, 1, 1), persistent=False)
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
