"""Batched, on-device augmentation built from config (kornia), plus the per-image reference.

kornia draws independent random parameters for every image of a batch, so one call augments the
whole batch on the GPU with the same distribution torchvision gives image by image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Pipeline(nn.Module):
    """Applies `ops` to a float batch in [0, 1]; an empty pipeline is the identity."""

    def __init__(self, ops: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.ops = nn.Sequential(*ops)
        # Augmentations hold no learnt state: keeping their buffers (kornia parameter ranges) out of
        # checkpoints lets pretraining, fine-tuning and inference use different recipes.
        for module in self.ops.modules():
            module._non_persistent_buffers_set.update(module._buffers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.ops) == 0:
            return x
        # Geometry and colour maths in fp32 even inside bf16 autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.ops(x.float())


class Normalize(nn.Module):
    """uint8 batch -> float in [0, 1] (for augmentation) and -> standardised (for the network)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @staticmethod
    def to_unit(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(255) if x.dtype == torch.uint8 else x.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def reference_transform(mean: Sequence[float], std: Sequence[float]):
    """The notebook's per-image torchvision recipe (for the benchmark's reference pipeline and tests)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomApply([T.RandomAffine(degrees=180, translate=(0.45, 0.45), scale=(0.6, 1.35))], p=0.64),
            T.RandomVerticalFlip(p=0.64),
            T.RandomHorizontalFlip(p=0.64),
            T.RandomApply([T.ColorJitter(0.6, 0.3, 0.3, 0.3)], p=0.64),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
