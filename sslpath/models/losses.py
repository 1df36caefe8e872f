"""SSL losses. NT-Xent (SimCLR) is ours, with its gather of the global batch under DDP; the other
methods use lightly's losses (sslpath.models.ssl), wrapped here where a paper's exact form needs it:
BYOL's 2 − 2·cos, and MoCo v3's InfoNCE against momentum keys, which lightly 1.6 does not have."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.utils import dist as lightly_dist
from torch import nn
from torch.distributed.nn.functional import all_gather  # carries gradients back to each rank


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-temperature cross-entropy over 2N embeddings; returns (loss, top-1 accuracy).

    Row i of z1 and row i of z2 are two views of one image. Each of the 2N embeddings is scored
    against the other 2N-1 (cosine similarity / temperature): its partner is the positive, the
    remaining 2N-2 are negatives. Computed in fp32 even under bf16 autocast: the logits' small
    differences are the signal.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent needs two (N, D) batches of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        idx = torch.arange(n, device=z.device)
        targets = torch.cat([idx + n, idx])
        loss = F.cross_entropy(logits, targets)
        top1 = (logits.argmax(dim=1) == targets).float().mean()
    return loss, top1


def gather_views(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views' embeddings of every rank, rank-major, so negatives come from the global batch.

    One gather of the stacked views keeps row i of z1 and z2 partners. The backward sums every
    rank's (identical) loss gradient into each rank's embeddings, i.e. world_size times the
    single-process gradient; DDP's averaging of parameter gradients divides that factor out again.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"gather_views needs two views of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    gathered = torch.cat(all_gather(torch.stack((z1, z2), dim=1)))  # (world·N, 2, D)
    return gathered[:, 0], gathered[:, 1]


class NTXentLoss(nn.Module):
    """NT-Xent as a module (lightly's `NTXentLoss` interface): `gather_distributed=True` scores
    every embedding against the global batch when torch.distributed runs with several ranks."""

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gather_distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            z1, z2 = gather_views(z1, z2)
        return nt_xent(z1, z2, self.temperature)


def _fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_fp32(v) for v in value)
    return value


def _device_type(value: Any) -> str:
    """The device type of the first tensor in value (nested lists and tuples), for autocast."""
    if isinstance(value, torch.Tensor):
        return value.device.type
    if isinstance(value, (list, tuple)):
        return next((d for d in map(_device_type, value) if d), "")
    return ""


class Float32(nn.Module):
    """Runs a loss in fp32 outside autocast, as nt_xent does: under bf16-mixed, cross-correlation
    sums (Barlow Twins), variances (VICReg) and sharpened softmaxes (DINO) lose their small
    differences. The wrapped loss's state (DINO's centre) stays at `<name>.loss.*`."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=_device_type(args) or "cpu", enabled=False):
            return self.loss(*_fp32(args), **{k: _fp32(v) for k, v in kwargs.items()})


class BYOLLoss(nn.Module):
    """BYOL's symmetrised loss (Grill et al. 2020, eq. 2): Σ over both directions of
    ‖p̄ − z̄′‖² = 2 − 2·cos(p, z′), the online prediction of one view against the target projection
    of the other; lightly's NegativeCosineSimilarity gives the mean −cos."""

    def __init__(self) -> None:
        from lightly.loss import NegativeCosineSimilarity  # lightly.loss imports timm if installed: only when used

        super().__init__()
        self.neg_cos = NegativeCosineSimilarity()

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return (2 + 2 * self.neg_cos(p1, z2.detach())) + (2 + 2 * self.neg_cos(p2, z1.detach()))


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo v3's contrastive loss ctr(q, k) (Chen et al. 2021, Algorithm 1): query i scored against
    every key by cosine / temperature, its own image's key k[offset + i] the positive, the other keys
    the negatives; cross-entropy × 2τ. Returns (loss, top-1 accuracy). fp32, as nt_xent."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
        logits = q @ k.T / temperature
        targets = torch.arange(len(q), device=q.device) + offset
        loss = F.cross_entropy(logits, targets) * (2 * temperature)
        top1 = (logits.argmax(dim=1) == targets).float().mean()
    return loss, top1


class MoCoV3Loss(nn.Module):
    """ctr(q1, k2) + ctr(q2, k1): each view's queries (online predictor) against the momentum keys
    of the other view. With `gather_distributed`, keys come from every rank (no gradient: they are
    the momentum encoder's), so negatives span the global batch; each rank scores its own queries,
    and DDP's gradient average makes the step that of the global batch's mean loss."""

    def __init__(self, temperature: float = 0.2, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature, self.gather_distributed = temperature, gather_distributed

    def forward(
        self, q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k1, k2, offset = k1.detach(), k2.detach(), 0
        if self.gather_distributed and lightly_dist.world_size() > 1:
            k1, k2 = (torch.cat(lightly_dist.gather(k.contiguous())) for k in (k1, k2))
            offset = lightly_dist.rank() * len(q1)
        loss1, top1_a = info_nce(q1, k2, self.temperature, offset)
        loss2, top1_b = info_nce(q2, k1, self.temperature, offset)
        return loss1 + loss2, (top1_a + top1_b) / 2
