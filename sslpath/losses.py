"""NT-Xent, the SimCLR contrastive loss, and the cross-rank gather of its embeddings under DDP."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-temperature cross-entropy over 2N embeddings; returns (loss, top-1 accuracy).

    Row i of z1 and row i of z2 are two views of one image. Each of the 2N embeddings is scored
    against the other 2N-1 (cosine similarity / temperature): its partner is the positive, the
    remaining 2N-2 are negatives. The accuracy is how often the partner scores highest.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent needs two (N, D) batches of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
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


def gather_views(
    z1: torch.Tensor, z2: torch.Tensor, all_gather: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views' embeddings of every rank, rank-major, for NT-Xent over the global batch under DDP.

    `all_gather` maps a local (N, ...) tensor to the stacked (world_size, N, ...) tensor of every
    rank and must carry gradients back (LightningModule.all_gather(..., sync_grads=True)). One call
    gathers both views, so row i of the returned z1 and z2 stay partners. Its backward sums the
    gradient of every rank's (identical) loss into each rank's embeddings, i.e. world_size times the
    single-process gradient; DDP's averaging of parameter gradients divides that factor out again.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"gather_views needs two views of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    gathered = all_gather(torch.stack((z1, z2), dim=1))  # (world_size, N, 2, D)
    if gathered.ndim != z1.ndim + 2:
        raise ValueError(f"all_gather returned shape {tuple(gathered.shape)}; expected (world_size, {z1.shape[0]}, 2, ...)")
    gathered = gathered.flatten(0, 1)
    return gathered[:, 0], gathered[:, 1]
