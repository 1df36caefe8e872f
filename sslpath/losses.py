"""NT-Xent, the SimCLR contrastive loss, with an optional gather of the global batch under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
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
