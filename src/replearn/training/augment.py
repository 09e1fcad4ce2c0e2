"""On-the-fly augmentations, named in `train.augmentations` and applied in that order to each image.

Strengths are kept mild on purpose: scale and position carry meaning in many class-folder datasets
(an 'o' and an 'O' differ mostly in height), so the crop keeps most of the image and the rotation
stays small. Flip is available but off by default, since characters have a handedness.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from replearn.config import Augmentation


def build_transform(name: Augmentation, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torchvision v2 transform for one augmentation name, at an image side of `size`."""
    if name == "random_resized_crop":
        return v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True)
    if name == "flip":
        return v2.RandomHorizontalFlip()
    if name == "color_jitter":
        return v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05)], p=0.8)
    if name == "rotation":
        return v2.RandomRotation(8.0, fill=255)
    return v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.3)


def build_augmentation(names: list[Augmentation], size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 CHW image -> float32 CHW in [0, 1], augmented with the named transforms in order."""
    return v2.Compose([build_transform(name, size) for name in names] + [v2.ToDtype(torch.float32, scale=True)])
