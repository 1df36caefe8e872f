"""Learning-rate schedules that need more than torch.optim provides."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, warmup_epochs: int, max_epochs: int, min_factor: float = 0.0) -> LambdaLR:
    """Linear warm-up for `warmup_epochs`, then cosine decay to `min_factor` × lr at `max_epochs`.

    Stepped once per epoch (the scheduler interval the models use).
    """

    def factor(epoch: int) -> float:
        if epoch < warmup_epochs:
            return (epoch + 1) / (warmup_epochs + 1)
        span = max(1, max_epochs - warmup_epochs)
        progress = min(1.0, (epoch - warmup_epochs) / span)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
