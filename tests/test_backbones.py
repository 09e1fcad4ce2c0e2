"""The backbones on offer: each trunk at tiny size, its ImageNet statistics, and torchvision's files loading into it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import get_args

import pytest
import torch

from replearn.config import BackboneConfig, BackboneName, ModelConfig
from replearn.training.backbones import BACKBONES, build_backbone
from replearn.training.model import build_model

TINY = {"d_model": 16, "heads": 2, "layers": 1, "embedding_dim": 8}
STRIDE_16 = [name for name, backbone in BACKBONES.items() if backbone.last_downsampling is not None]


def test_the_config_offers_exactly_the_backbones_built_here() -> None:
    assert set(get_args(BackboneName)) == set(BACKBONES)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_imagenet_url_names_its_sha256_prefix(name: str) -> None:
    """torch.hub checks the hash only when the file name carries one: `-<hex>.pth`."""
    assert torch.hub.HASH_REGEX.search(os.path.basename(BACKBONES[name].imagenet.url))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_backbone_embeds_at_tiny_size_with_its_imagenet_statistics(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate({**TINY, "backbone": {"name": name}})).eval()
    with torch.no_grad():
        features = model.backbone(torch.rand(2, 3, 64, 64))
        embeddings = model(torch.rand(2, 3, 64, 64))
    assert features.shape[1] == model.project.in_channels and features.shape[2:] == (2, 2)
    assert embeddings.shape == (2, 8)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    transforms = BACKBONES[name].imagenet.transforms()
    torch.testing.assert_close(model.mean.flatten(), torch.tensor(transforms.mean))
    torch.testing.assert_close(model.std.flatten(), torch.tensor(transforms.std))


@pytest.mark.parametrize("name", STRIDE_16)
def test_output_stride_16_doubles_the_feature_map(name: str) -> None:
    trunk, _ = build_backbone(BackboneConfig(name=name, output_stride=16))
    with torch.no_grad():
        assert trunk.eval()(torch.rand(1, 3, 64, 64)).shape[2:] == (4, 4)


def test_convnext_refuses_output_stride_16() -> None:
    with pytest.raises(ValueError, match="output_stride 16 is not offered for convnext_tiny"):
        BackboneConfig(name="convnext_tiny", output_stride=16)


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnet_y_400mf"])  # convnext_tiny: 110 MB, same head name
def test_a_torchvision_state_dict_loads_without_its_head(name: str, tmp_path: Path) -> None:
    """The file torchvision ships holds the classifier too; the trunk takes everything else, strictly."""
    reference = BACKBONES[name].build(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    trunk, _ = build_backbone(BackboneConfig(name=name, weights=str(path)))
    head = BACKBONES[name].head + "."
    expected = [value for key, value in reference.state_dict().items() if not key.startswith(head)]
    loaded = list(trunk.state_dict().values())
    assert len(loaded) == len(expected)
    for value, reference_value in zip(loaded, expected, strict=True):
        torch.testing.assert_close(value, reference_value)
