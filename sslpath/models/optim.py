"""Parameter groups and learning-rate schedules, all stepped per optimisation step.

Every schedule takes `(optimizer, steps_per_epoch, max_epochs, …)` so configs give epochs and the
model supplies the step counts it knows only once the trainer has its data.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR


def parameter_groups(model: nn.Module, no_decay_norm_bias: bool) -> list[dict]:
    """Trainable parameters; with `no_decay_norm_bias`, norm weights and biases get no weight decay
    (standard for SSL and ResNets since Goyal et al. 2017: decaying them only shrinks scales)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
            (no_decay if no_decay_norm_bias and (is_norm or name == "bias") else decay).append(param)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def warmup_cosine(
    optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, warmup_epochs: float = 1, min_factor: float = 0.0
) -> LRScheduler:
    """Linear warm-up over `warmup_epochs`, then cosine decay to `min_factor` × lr at the last step."""
    total = max(1, steps_per_epoch * max_epochs)
    warmup = min(total - 1, round(steps_per_epoch * warmup_epochs))
    eta_min = [group["lr"] * min_factor for group in optimizer.param_groups][0]
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=eta_min)
    if warmup <= 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def multistep(
    optimizer: Optimizer, steps_per_epoch: int, max_epochs: int, milestones: Sequence[int] = (), gamma: float = 0.1
) -> LRScheduler:
    """lr × gamma after each epoch in `milestones` (the reference notebook: [2, 6], 0.1)."""
    return MultiStepLR(optimizer, [m * steps_per_epoch for m in milestones], gamma)


def constant(optimizer: Optimizer, steps_per_epoch: int, max_epochs: int) -> LRScheduler:
    return ConstantLR(optimizer, factor=1.0, total_iters=0)
