"""Batched, on-device augmentation built from config (kornia), the batch transform the data layer
applies after the batch reaches the device, and the notebook's per-image reference recipe.

kornia draws independent random parameters for every image of a batch, so one call augments the
whole batch on the GPU with the same distribution torchvision gives image by image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sslpath.core.errors import UserError


class Pipeline(nn.Module):
    """Applies `ops` to a float batch in [0, 1]; an empty pipeline is the identity."""

    def __init__(self, ops: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.ops = nn.Sequential(*ops)

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
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class BatchTransform(nn.Module):
    """uint8 N×C×H×W batch on the device -> what a model consumes.

    Training: `views` independently augmented, normalised views (SSL methods take 2; with
    `clean_first_view` the first is the plain image, as in the reference notebook). `augment` is
    one pipeline for every view, or a list of one per view (BYOL's asymmetric views). Evaluation:
    the normalised image, never augmented. `stain` (a fitted `sslpath.data.stain_norm.StainNormalizer`)
    maps every image to the reference stain appearance first, in training and evaluation alike.
    """

    def __init__(
        self,
        augment: nn.Module | Sequence[nn.Module] | None = None,
        views: int = 1,
        clean_first_view: bool = False,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        channels_last: bool = True,
        stain: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if isinstance(augment, Sequence):
            if len(augment) != views:
                raise UserError(
                    f"model.input.augment lists {len(augment)} per-view pipelines but model.input.views={views}: give one "
                    "pipeline per view, or a single pipeline for all views."
                )
            augment = nn.ModuleList(augment)
        self.augment = augment if augment is not None else Pipeline()
        self.views, self.clean_first_view = views, clean_first_view
        self.normalize = Normalize(mean, std)
        self.channels_last = channels_last
        self.stain = stain

    def _unit(self, images: torch.Tensor) -> torch.Tensor:
        x = Normalize.to_unit(images)
        return x if self.stain is None else self.stain(x)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self._unit(images)
        per_view = self.augment if isinstance(self.augment, nn.ModuleList) else [self.augment] * self.views
        return [self._finish(x if (i == 0 and self.clean_first_view) else per_view[i](x)) for i in range(self.views)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The evaluation transform: normalised, not augmented."""
        return self._finish(self._unit(images))
