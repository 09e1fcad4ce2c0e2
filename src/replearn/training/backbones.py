"""The torchvision classifiers a model can start from, cut down to the trunk that yields a feature map.

Each entry names its torchvision constructor, its ImageNet weights (a torchvision `WeightsEnum`
member: the file's URL, which ends in its sha256 prefix, and the mean/std it was trained with), the
classifier head that is dropped, and the layers from the image to the last feature map. The model
(training/model.py) puts a 1x1 conv, positional embeddings and a transformer on that map.

Nothing downloads unless the config says `weights: imagenet`. Then the file comes from torch's hub
cache (`torch.hub.get_dir()/checkpoints`, under `$TORCH_HOME`), and when it is missing there,
torchvision's own download fetches it with its hash check and a progress bar, unless
REPLEARN_OFFLINE=1 forbids the network: then, as when the download fails, a UserError says which
file to copy where.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from replearn.artifacts.checkpoint import load_torch_dict
from replearn.config import BackboneConfig
from replearn.errors import UserError

log = logging.getLogger(__name__)

OFFLINE_VARIABLE = "REPLEARN_OFFLINE"
Statistics = tuple[float, float, float]


def resnet_trunk(model: models.ResNet) -> list[nn.Module]:
    """Stem and the four residual stages: everything before global pooling and fc."""
    return [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4]


def resnet_last_downsampling(model: models.ResNet) -> nn.Module:
    """The first block of the last stage, whose 3x3 conv and shortcut both have stride 2."""
    return model.layer4[0]


def features_trunk(model: models.ConvNeXt | models.EfficientNet) -> list[nn.Module]:
    """ConvNeXt's and EfficientNet's `features`: every stage before pooling and the classifier."""
    return list(model.features)


def efficientnet_last_downsampling(model: models.EfficientNet) -> nn.Module:
    """The first MBConv block of the last stage that downsamples (features[6]; features[7] keeps its size)."""
    return model.features[6][0]


def regnet_trunk(model: models.RegNet) -> list[nn.Module]:
    """RegNet's stem and its four stages (trunk_output): everything before pooling and fc."""
    return [model.stem, model.trunk_output]


def regnet_last_downsampling(model: models.RegNet) -> nn.Module:
    """The first block of the last stage, whose grouped 3x3 conv and projection both have stride 2."""
    return model.trunk_output[-1][0]


@dataclass(frozen=True)
class Backbone:
    """How to turn one torchvision classifier into a feature-map trunk, and the ImageNet weights it can start from."""

    build: Callable[..., nn.Module]
    imagenet: WeightsEnum
    # The attribute holding the classifier head; it is deleted, and its state_dict keys are dropped.
    head: str
    trunk: Callable[[Any], list[nn.Module]]
    # The block output_stride 16 runs at stride 1; None where that is not offered (config.py refuses it).
    last_downsampling: Callable[[Any], nn.Module] | None


# Keyed by config.BackboneName, which lists the same names without importing torch (a test compares them).
BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone(
        models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, "fc", resnet_trunk, resnet_last_downsampling
    ),
    "resnet34": Backbone(
        models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1, "fc", resnet_trunk, resnet_last_downsampling
    ),
    "resnet50": Backbone(
        models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2, "fc", resnet_trunk, resnet_last_downsampling
    ),
    "convnext_tiny": Backbone(
        models.convnext_tiny, models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, "classifier", features_trunk, None
    ),
    "efficientnet_b0": Backbone(
        models.efficientnet_b0,
        models.EfficientNet_B0_Weights.IMAGENET1K_V1,
        "classifier",
        features_trunk,
        efficientnet_last_downsampling,
    ),
    "regnet_y_400mf": Backbone(
        models.regnet_y_400mf, models.RegNet_Y_400MF_Weights.IMAGENET1K_V2, "fc", regnet_trunk, regnet_last_downsampling
    ),
    "regnet_y_1_6gf": Backbone(
        models.regnet_y_1_6gf, models.RegNet_Y_1_6GF_Weights.IMAGENET1K_V2, "fc", regnet_trunk, regnet_last_downsampling
    ),
}


def imagenet_statistics(name: str) -> tuple[Statistics, Statistics]:
    """The mean and std the ImageNet weights of `name` were trained with, from torchvision's own transforms.

    The model normalises with them whether or not it starts from those weights, so a model's
    normalisation depends on its architecture alone, and the ONNX metadata records the same values.
    """
    transforms = BACKBONES[name].imagenet.transforms()
    mean, std = tuple(float(v) for v in transforms.mean), tuple(float(v) for v in transforms.std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{name}'s ImageNet transforms normalise {len(mean)} channels, not 3")
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision's own download caches the ImageNet weights of `name` (and where they are looked for)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(BACKBONES[name].imagenet.url)


def offline_requested() -> bool:
    """True when REPLEARN_OFFLINE says never to reach the network (1, true, yes or on)."""
    return os.environ.get(OFFLINE_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def missing_imagenet_weights(name: str, why: str) -> UserError:
    """The error for an ImageNet file that is not in the cache and cannot be downloaded: what to copy where."""
    path, url = imagenet_weights_path(name), BACKBONES[name].imagenet.url
    return UserError(
        f"train.model.backbone.weights=imagenet needs {path}, which is missing, and {why}; "
        f"fetch {url} on a machine with network and copy it there (or point TORCH_HOME at a cache that has it), "
        "or set train.model.backbone.weights to a state_dict file, or to none"
    )


def read_imagenet_state(name: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state_dict of `name`: from the hub cache, else downloaded into it.

    The download is torchvision's own (`WeightsEnum.get_state_dict`, i.e. torch.hub's
    load_state_dict_from_url): a progress bar on stderr, a partial file renamed into place only
    when the sha256 of its content starts with the prefix in its name. The cache is checked first
    and REPLEARN_OFFLINE before any connection is attempted.
    """
    weights = BACKBONES[name].imagenet
    path = imagenet_weights_path(name)
    if path.is_file():
        return load_torch_dict(path, "a loadable state_dict")
    if offline_requested():
        raise missing_imagenet_weights(name, f"{OFFLINE_VARIABLE} forbids downloading it")
    log.info("downloading %s's ImageNet weights from %s to %s", name, weights.url, path)
    try:
        state = weights.get_state_dict(model_dir=str(path.parent), progress=True, check_hash=True, weights_only=True)
    except OSError as error:  # no network, refused, HTTP errors (URLError), an unwritable cache
        raise missing_imagenet_weights(name, f"downloading it failed ({error})") from None
    except RuntimeError as error:  # torch.hub's hash check; the partial file is already deleted
        raise UserError(f"the download of {weights.url} was refused, nothing was kept: {error}") from None
    log.info("%s's ImageNet weights are cached at %s", name, path)
    return state


def read_backbone_state(config: BackboneConfig) -> dict[str, torch.Tensor] | None:
    """The backbone's starting weights, without the classifier head: None (random), ImageNet's, or a file's."""
    if config.weights == "none":
        return None
    if config.weights == "imagenet":
        state = read_imagenet_state(config.name)
    else:
        path = Path(config.weights)
        if not path.is_file():
            raise UserError(f"train.model.backbone.weights: {path} does not exist (expected none, imagenet or a file)")
        state = load_torch_dict(path, "a loadable state_dict")
    head = BACKBONES[config.name].head + "."
    return {key: value for key, value in state.items() if not key.startswith(head)}


def measure_channels(trunk: nn.Module) -> int:
    """The channels of the trunk's feature map, from one small forward pass in eval mode.

    Measured rather than tabulated, so an entry needs only its layers; eval mode leaves the batch
    norm statistics untouched, and the trunk is returned to training mode.
    """
    trunk.eval()
    with torch.no_grad():
        channels = int(trunk(torch.zeros(1, 3, 64, 64)).shape[1])
    trunk.train()
    return channels


def build_backbone(config: BackboneConfig) -> tuple[nn.Sequential, int]:
    """The trunk of the torchvision classifier `config.name`, its starting weights loaded, and its channels."""
    backbone = BACKBONES[config.name]
    classifier = backbone.build(weights=None)
    state = read_backbone_state(config)
    delattr(classifier, backbone.head)
    if state is not None:
        try:
            classifier.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise UserError(f"{config.weights} does not fit a {config.name}: {str(error)[:500]}") from None
        log.info("backbone %s starts from %s", config.name, config.weights)
    if config.output_stride == 16:
        if backbone.last_downsampling is None:
            raise UserError(f"output_stride 16 is not offered for {config.name}")
        for module in backbone.last_downsampling(classifier).modules():
            if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                module.stride = (1, 1)
    trunk = nn.Sequential(*backbone.trunk(classifier))
    return trunk, measure_channels(trunk)
