"""The one resize every path shares (training, evaluation, predict, benchmark), so a tile gives the
model the same pixels whichever command read it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CHUNK = 4096  # images resized at a time: bounds the float copy's memory


def to_tiles(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N×H×W×C (numpy, as stored) or N×C×H×W (tensor) -> uint8 N×3×size×size.

    Grayscale (C=1) becomes 3 identical channels for the RGB backbones. Resizing is antialiased
    bilinear, rounded back to uint8, done once at load time.
    """
    if isinstance(images, np.ndarray):
        if images.ndim == 3:  # N×H×W grayscale, as some MedMNIST sets store it
            images = images[..., None]
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    images = images.contiguous()
    if images.shape[-2:] == (size, size):
        return images
    chunks = [
        F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True).round_().clamp_(0, 255).to(torch.uint8)
        for chunk in images.split(CHUNK)
    ]
    return torch.cat(chunks)
