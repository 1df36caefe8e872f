"""Test-time augmentation over the dihedral group D4: a tile has no canonical orientation, so the model
sees all eight symmetries of the square (four right-angle rotations, each also mirrored) and the mean of
its eight softmax outputs is the prediction.

`DihedralTTA` wraps a plain predictor (uint8 N×3×H×W -> logits, as `sslpath.results.artifacts.class_logits`)
and returns log of the mean softmax, a valid logit vector (its softmax is the mean), so losses,
accuracies, intervals, calibration and the corruption benchmark read it as they read plain logits. The
transforms are exact (index permutations, no resampling) and act on the uint8 tiles, before the
evaluation transform, so stain normalisation and standardisation run as for plain predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

TRANSFORMS = 8  # |D4|: rotations by 0, 90, 180, 270 degrees, without and with a mirror


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0..7) symmetry of square tiles N×C×H×W: k % 4 quarter turns, then a mirror if k >= 4."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"dihedral test-time augmentation takes square tiles, got shape {tuple(x.shape)}")
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


class DihedralTTA:
    """Predictor of log mean softmax over the eight dihedral transforms of each batch; `plain` is the wrapped one."""

    def __init__(self, plain: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.plain = plain

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([self.plain(dihedral(images, k)).float().log_softmax(dim=1) for k in range(TRANSFORMS)])
        return torch.logsumexp(log_probs, dim=0) - math.log(TRANSFORMS)  # finite where a softmax would underflow to 0
