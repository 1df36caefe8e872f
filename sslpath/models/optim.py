"""Parameter groups, optimizer settings and learning-rate schedules, all stepped per optimisation step.

Every schedule takes `(optimizer, steps_per_epoch, max_epochs, …)` so configs give epochs and the
model supplies the step counts it knows only once the trainer has its data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR


def parameter_groups(model: nn.Module, no_decay_norm_bias: bool) -> list[dict]:
    """Trainable parameters; with `no_decay_norm_bias`, norm weights and biases get no weight decay
    (standard for SSL and ResNets since Goyal et al. 2017: decaying them only shrinks scales) and
    no LARS adaptation (lightly's LARS skips groups without weight decay), as BYOL, SimCLR, Barlow
    Twins, VICReg and MoCo v3 exclude them. `role` tells the groups apart for `OptimizerSettings`."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
            (no_decay if no_decay_norm_bias and (is_norm or name == "bias") else decay).append(param)
    groups = [{"params": decay, "role": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "role": "norm_bias"})
    return groups


@dataclass(frozen=True)
class OptimizerSettings:
    """Keys of an optimizer config that sslpath applies itself (every other key goes to the
    optimizer class): the papers' learning-rate scaling and DINO's weight-decay schedule."""

    # optimizer.lr (and norm_bias_lr) are for this global batch: the run uses lr × global batch /
    # reference_batch (the linear scaling rule of SimCLR, BYOL, MoCo v3, Barlow Twins, VICReg, DINO).
    # null: optimizer.lr as given.
    reference_batch: int | None = None
    # weight decay of the decayed group on a cosine from optimizer.weight_decay to this value over the
    # run's optimiser steps (DINO: 0.04 -> 0.4); null: constant.
    weight_decay_end: float | None = None
    # learning rate of norm weights and biases, at reference_batch (Barlow Twins: 0.0048 beside 0.2);
    # null: optimizer.lr.
    norm_bias_lr: float | None = None

    def lr_scale(self, global_batch: int) -> float:
        return global_batch / self.reference_batch if self.reference_batch else 1.0


def split_settings(factory: Callable[..., Optimizer]) -> tuple[Callable[..., Optimizer], OptimizerSettings]:
    """The optimizer factory (Hydra's partial of the optimizer class) without sslpath's own keys,
    and those keys as `OptimizerSettings`."""
    if not isinstance(factory, functools.partial):
        return factory, OptimizerSettings()
    keywords: dict[str, Any] = dict(factory.keywords)
    settings = OptimizerSettings(**{f.name: keywords.pop(f.name) for f in fields(OptimizerSettings) if f.name in keywords})
    return functools.partial(factory.func, *factory.args, **keywords), settings


def build_optimizer(
    factory: Callable[..., Optimizer], settings: OptimizerSettings, groups: list[dict], global_batch: int
) -> Optimizer:
    """The optimizer over `groups` with the run's learning rates: optimizer.lr (and norm_bias_lr)
    scaled by global batch / reference_batch."""
    scale = settings.lr_scale(global_batch)
    if settings.norm_bias_lr is not None:
        groups = [{**g, "lr": settings.norm_bias_lr * scale} if g.get("role") == "norm_bias" else g for g in groups]
    if scale == 1.0:
        return factory(groups)
    base = factory.keywords.get("lr") if isinstance(factory, functools.partial) else None
    if base is None:
        raise ValueError("optimizer.reference_batch scales optimizer.lr, which this optimizer config does not set")
    return factory(groups, lr=base * scale)


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
