"""On-the-fly augmentations, named in `train.augmentations` and applied in that order to each image.

Two kinds. The geometric and photometric ones (`random_resized_crop`, `rotation`, `color_jitter`,
`blur`, `flip`) vary the photograph. The style ones (`stroke`, `shear`, `perspective`, `elastic`,
`noise`) vary the way a thing is drawn, which is what differs between a class's images in a new
typeface, by a new artist or from a new scanner: stroke weight, slant, proportions, wobble. All keep
the class: scale and position carry meaning in many class-folder datasets (an 'o' and an 'O' differ
mostly in height), so the crop keeps most of the image, rotation and shear stay small, and flip
(characters have a handedness) is off by default.

Every transform draws from torch's default generator, which `PKBatchDataset` seeds per batch, so a
batch is a pure function of (seed, rank, iteration). Images are uint8 CHW, and stay uint8 until
the last step makes them float32 in [0, 1]. Geometric transforms fill the area they uncover with
the image's own background (the median of its border), so no white wedge tells where they acted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from replearn.config import Augmentation

Fill = list[float]


def background(image: torch.Tensor) -> Fill:
    """The median of the image's border pixels, per channel: the paper a glyph or an object sits on."""
    border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
    return [float(value) for value in border.float().median(dim=1).values]


class OnBackground(torch.nn.Module):
    """A geometric transform built per image with that image's background as its fill."""

    def __init__(self, build: Callable[[Fill], Callable[[torch.Tensor], torch.Tensor]]) -> None:
        super().__init__()
        self.build = build

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.build(background(image))(image)


class StrokeWidth(torch.nn.Module):
    """Bolder or lighter strokes, each with probability p/2: grey-level morphology for dark ink on light paper.

    Weight is style, not class: a bold and a light 'a' are the same letter. Bolder is a 3x3 minimum
    filter (the ink spreads by a pixel); lighter averages the image with its 3x3 maximum filter, so a
    hairline fades instead of vanishing. The image keeps its size, dtype and range.
    """

    def __init__(self, p: float = 0.5, kernel: int = 3) -> None:
        super().__init__()
        self.p, self.kernel = p, kernel

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        draw = float(torch.rand(()))
        if draw >= self.p:
            return image
        pixels = image.unsqueeze(0).float()
        out = -self.maximum(-pixels) if draw < self.p / 2 else (pixels + self.maximum(pixels)) / 2
        return out.round().squeeze(0).to(image.dtype)

    def maximum(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(pixels, self.kernel, stride=1, padding=self.kernel // 2)


class PixelNoise(torch.nn.Module):
    """Gaussian pixel noise with a standard deviation drawn from [0, max_sigma] grey levels, on uint8."""

    def __init__(self, max_sigma: float = 12.0) -> None:
        super().__init__()
        self.max_sigma = max_sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        sigma = float(torch.rand(())) * self.max_sigma
        noisy = image.float() + torch.randn(image.shape) * sigma
        return noisy.clamp(0, 255).round().to(image.dtype)


def build_transform(name: Augmentation, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform for one augmentation name, at an image side of `size`."""
    transforms: dict[Augmentation, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
        "random_resized_crop": lambda: v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
        "flip": lambda: v2.RandomHorizontalFlip(),
        "color_jitter": lambda: v2.RandomApply(
            [v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05)], p=0.8
        ),
        "rotation": lambda: OnBackground(lambda fill: v2.RandomRotation(8.0, fill=fill)),
        "blur": lambda: v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.3),
        "stroke": lambda: StrokeWidth(),
        "shear": lambda: OnBackground(lambda fill: v2.RandomAffine(degrees=0.0, shear=(-15.0, 15.0), fill=fill)),
        "perspective": lambda: OnBackground(lambda fill: v2.RandomPerspective(0.25, p=0.5, fill=fill)),
        "elastic": lambda: v2.RandomApply(
            [OnBackground(lambda fill: v2.ElasticTransform(alpha=float(size), sigma=size / 10, fill=fill))], p=0.5
        ),
        "noise": lambda: PixelNoise(),
    }
    return transforms[name]()


def build_augmentation(names: list[Augmentation], size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 CHW image -> float32 CHW in [0, 1], augmented with the named transforms in order."""
    return v2.Compose([build_transform(name, size) for name in names] + [v2.ToDtype(torch.float32, scale=True)])
