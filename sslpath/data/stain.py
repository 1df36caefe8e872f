"""Stain-aware augmentation for H&E tiles: HED colour-space jitter and right-angle rotations.

Colour deconvolution (Ruifrok & Johnston 2001) splits an RGB tile's optical density into
haematoxylin, eosin and DAB concentrations; perturbing those (Tellez et al. 2018, 2019) mimics the
stain variation between labs and scanners better than RGB/HSV jitter, because it changes how much of
each dye there is rather than the hue of every pixel alike. Both ops are nn.Modules on float batches
N×3×H×W in [0, 1], so they sit in any `sslpath.data.augment.Pipeline` op list, and draw one set of
parameters per image from torch's global RNG (seeded per epoch by sslpath's EpochSeed).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Ruifrok & Johnston's stain vectors, rows H, E, DAB, as scikit-image's `rgb_from_hed`.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
EPS = 1e-6  # scikit-image floors RGB at 1e-6 before the log, so black has a finite density
# scikit-image >= 0.19 divides optical density by -log(EPS) so stains lie in [0, 1]; the HED jitter
# works in plain optical density (natural log), the units of Tellez et al.'s ranges.
OD_SCALE = -math.log(EPS)


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Per-pixel row vector times matrix, as scikit-image's `pixels @ conv_matrix`."""
    return torch.einsum("nchw,cd->ndhw", x, matrix.to(device=x.device, dtype=x.dtype))


def stain_density(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> H, E, DAB optical densities (natural log units), unclipped so the map is invertible."""
    return _mix(-x.clamp_min(EPS).log(), HED_FROM_RGB)


def density_to_rgb(density: torch.Tensor) -> torch.Tensor:
    """H, E, DAB optical densities -> RGB in [0, 1]."""
    return torch.exp(-_mix(density, RGB_FROM_HED)).clamp(0, 1)


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """scikit-image's `rgb2hed` on a batch N×3×H×W: stains in [0, 1], negatives clipped to 0."""
    return (stain_density(x) / OD_SCALE).clamp_min(0)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """scikit-image's `hed2rgb` on a batch N×3×H×W."""
    return density_to_rgb(hed * OD_SCALE)


def _check_batch(x: torch.Tensor, op: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{op} takes float RGB batches N×3×H×W, got shape {tuple(x.shape)}")


def _chosen(n: int, p: float, device: torch.device) -> torch.Tensor:
    """Which of n images an op with probability p applies to, as an N×1×1×1 mask."""
    return (torch.rand(n, device=device) < p).view(n, 1, 1, 1)


class RandomHEDJitter(nn.Module):
    """HED jitter (Tellez et al. 2018): each stain's density s becomes α·s + β, per image and stain.

    α ~ U(1 − alpha, 1 + alpha) and β ~ U(−beta, beta) (β in optical-density units). Tellez et al.
    2019 call alpha = beta = 0.05 "HED-light" and 0.2 "HED-strong". Each image is jittered with
    probability p; the others pass through unchanged. Runs in fp32 and clamps to [0, 1].
    """

    def __init__(self, alpha: float = 0.05, beta: float = 0.05, p: float = 1.0) -> None:
        super().__init__()
        if not (0 <= alpha < 1 and beta >= 0 and 0 <= p <= 1):
            raise ValueError(f"RandomHEDJitter needs 0 <= alpha < 1, beta >= 0, 0 <= p <= 1; got {alpha=}, {beta=}, {p=}")
        self.alpha, self.beta, self.p = alpha, beta, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, type(self).__name__)
        n, device = x.shape[0], x.device
        scale = 1 + self.alpha * (2 * torch.rand(n, 3, 1, 1, device=device) - 1)
        shift = self.beta * (2 * torch.rand(n, 3, 1, 1, device=device) - 1)
        return torch.where(_chosen(n, self.p, device), jitter_stains(x, scale, shift), x)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, p={self.p}"


def jitter_stains(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x with each stain density s replaced by scale·s + shift (N×3×1×1 each, optical-density units)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.float()
        return density_to_rgb(stain_density(x) * scale.float() + shift.float())


class RandomRotate90(nn.Module):
    """Rotate each image by an independent uniform multiple of 90°, with probability p.

    Exact (torch.rot90, no resampling) and uniform over the four angles, unlike kornia 0.9's
    RandomRotation90, which warps bilinearly and rounds a continuous draw (the end angles get half
    the weight). With flips it spans all eight symmetries of a square tile, none of which tissue minds.
    """

    def __init__(self, p: float = 1.0) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"RandomRotate90 needs 0 <= p <= 1, got {p=}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"RandomRotate90 takes square batches N×C×H×W, got shape {tuple(x.shape)}")
        quarter_turns = torch.randint(0, 4, (x.shape[0],), device=x.device)
        quarter_turns = quarter_turns * _chosen(x.shape[0], self.p, x.device).view(-1)
        out = x.clone()
        for k in range(1, 4):
            idx = (quarter_turns == k).nonzero().view(-1)
            if len(idx):
                out[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"
