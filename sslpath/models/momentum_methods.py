"""SSL methods whose targets come from a momentum (EMA) copy of the online network: BYOL, MoCo v3 and DINO
(their schedule and its init share: sslpath.models.momentum). Heads and losses are lightly's (MoCo v3's
heads are built as its official code); defaults and their sources: docs/methods.md.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from sslpath.core.errors import UserError
from sslpath.models import momentum as ema
from sslpath.models.losses import BYOLLoss, Float32, MoCoV3Loss
from sslpath.models.ssl import Pair, SSLMethod, SSLStep, check_views

log = logging.getLogger(__name__)
# A target that keeps more of its random initialisation than this at the end of a run gets a warning.
WARN_INIT_SHARE = 0.5


def frozen_copy(module: nn.Module, build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A momentum (EMA) copy: same weights, requires_grad=False, so `parameter_groups` leaves it out of
    the optimiser. `build` makes a fresh instance where deepcopy fails (weight-normalised layers)."""
    twin = copy.deepcopy(module) if build is None else build()
    if build is not None:
        twin.load_state_dict(module.state_dict())
    deactivate_requires_grad(twin)
    return twin


def moco_v3_mlp(input_dim: int, hidden_dim: int, output_dim: int, last_bn: bool) -> nn.Sequential:
    """MoCo v3's 2-layer MLP for ResNets (official code: moco/builder.py `_build_mlp(2, …)`): Linear
    without bias, BatchNorm, ReLU, Linear without bias, then — the projector only (`last_bn`) — a
    BatchNorm without affine ("we further removed gamma in BN"); the predictor ends in the Linear."""
    layers: list[nn.Module] = [
        nn.Linear(input_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, output_dim, bias=False),
    ]
    if last_bn:
        layers.append(nn.BatchNorm1d(output_dim, affine=False))
    return nn.Sequential(*layers)


class MomentumMethod(SSLMethod):
    """A method whose targets come from a momentum (EMA) copy of the online backbone and projector.

    Subclasses set `projector` and `momentum_projector = frozen_copy(projector)`. After every
    optimiser step θ_m ← m·θ_m + (1 − m)·θ (lightly's `update_momentum`), m rising from the run's
    m_start to `momentum_end` on a cosine over the run's optimiser steps (BYOL's schedule, also
    MoCo v3's and DINO's). The run's m_start is `momentum_start` (the paper's), lowered on short
    runs until the target keeps at most `momentum_max_init_share` of its random initialisation
    (`sslpath.models.momentum`; null: never lowered, a warning above 0.5).

    The online backbone is `backbone` and its copy `momentum_backbone`; with `export_target`
    (DINO's teacher) the copy is `backbone`, the network the run exports, and the online one
    `online_backbone`. The copies are submodules, so checkpoints keep them (a resumed run
    continues its targets); `load_ssl_backbone` takes only `backbone.*`.
    """

    def __init__(
        self,
        momentum_start: float = 0.99,
        momentum_end: float = 1.0,
        momentum_max_init_share: float | None = 0.1,
        export_target: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 <= momentum_start <= momentum_end <= 1:
            raise ValueError(f"need 0 <= momentum_start <= momentum_end <= 1, got {momentum_start}, {momentum_end}")
        if momentum_max_init_share is not None and not 0 < momentum_max_init_share <= 1:
            raise ValueError(f"momentum_max_init_share must be in (0, 1] or null, got {momentum_max_init_share}")
        if export_target and self.joint:
            raise UserError(
                f"{type(self).__name__}: joint=true trains the exported backbone with the probe's loss, but the exported "
                "backbone is the momentum target, which takes no gradients. Use joint=false, or export the online "
                "network (DINO: model.export=student)."
            )
        self.momentum_start, self.momentum_end = momentum_start, momentum_end
        self.momentum_max_init_share = momentum_max_init_share
        self.run_momentum_start = momentum_start  # set for the run's length in on_train_start
        self.export_target = export_target
        if export_target:
            self.online_backbone = self.backbone
            self.backbone = frozen_copy(self.online_backbone)
        else:
            self.momentum_backbone = frozen_copy(self.backbone)

    @property
    def online(self) -> nn.Module:
        """The backbone the optimiser trains."""
        return self.online_backbone if self.export_target else self.backbone

    @property
    def target(self) -> nn.Module:
        """The backbone that follows it by EMA."""
        return self.backbone if self.export_target else self.momentum_backbone

    @torch.no_grad()
    def momentum_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target backbone features, target projection) of one batch."""
        feats = self.target(x)
        return feats, self.momentum_projector(feats)

    def total_steps(self) -> int | None:
        total = self.trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else None  # max_epochs=-1 without max_steps: no schedule

    def on_train_start(self) -> None:
        """The run's m_start, from its length (the same on resume: it depends only on the settings)."""
        total = self.total_steps()
        if total is None:
            return
        limit, start = self.momentum_max_init_share, self.momentum_start
        if limit is not None:
            start = ema.start_for_share(total, self.momentum_start, self.momentum_end, limit)
        self.run_momentum_start = start
        share = ema.init_share(total, start, self.momentum_end)
        if start < self.momentum_start:
            log.info(
                "momentum: %d optimiser steps would leave the target %.0f%% of its random initialisation with "
                "momentum_start=%g; starting at %.6g instead, which leaves %.0f%% (model.momentum_max_init_share=%g)",
                total,
                100 * ema.init_share(total, self.momentum_start, self.momentum_end),
                self.momentum_start,
                start,
                100 * share,
                limit,
            )
        if share > WARN_INIT_SHARE:
            log.warning(
                "momentum: after this run's %d optimiser steps the momentum target still holds %.0f%% of its random "
                "initialisation (momentum_start=%g): its targets are mostly random. Train longer, or set "
                "model.momentum_max_init_share (e.g. 0.1) so the schedule starts lower on short runs.",
                total,
                100 * share,
                start,
            )

    def run_record(self) -> dict[str, Any]:
        total = self.total_steps()
        return {
            "momentum_start": self.run_momentum_start,
            "target_init_share": None if total is None else ema.init_share(total, self.run_momentum_start, self.momentum_end),
        }

    def momentum(self, step: int) -> float:
        """m after optimiser step `step` (0-based) of the run."""
        total = self.total_steps()
        if total is None:
            return self.run_momentum_start
        return cosine_schedule(step, total, self.run_momentum_start, self.momentum_end)

    @torch.no_grad()
    def update_momentum_copies(self, m: float) -> None:
        update_momentum(self.online, self.target, m)
        update_momentum(self.projector, self.momentum_projector, m)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The papers' order: the optimiser updates θ, then the copies follow θ. Hooked here rather
        than per batch, so gradient accumulation still gives one update per optimiser step."""
        super().optimizer_step(*args, **kwargs)
        # Lightning counts this step in global_step only after the hook returns: it is this step's 0-based index
        self.update_momentum_copies(self.momentum(self.trainer.global_step))

    def predict_and_target(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, Pair, Pair]:
        """(online backbone features of both views, online predictions (p1, p2), momentum targets
        (t1, t2)); every network sees each view on its own, as the official BYOL and MoCo v3 code."""
        feats, z1, z2 = self.project_pair(views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t1, t2 = (self.momentum_forward(v)[1] for v in views[:2])
        return feats, (p1, p2), (t1, t2)


class BYOL(MomentumMethod):
    """BYOL (Grill et al. 2020): the online network predicts the momentum network's projection of
    the other view; no negatives — the predictor and the slow target prevent collapse."""

    kind = "byol"
    colour = "#DDCC77"

    def __init__(
        self, projector_hidden_dim: int = 4096, projector_dim: int = 256, predictor_hidden_dim: int = 4096, **kwargs: Any
    ) -> None:
        from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead

        super().__init__(**kwargs)
        self.projector = BYOLProjectionHead(self.backbone.out_dim, projector_hidden_dim, projector_dim)
        self.momentum_projector = frozen_copy(self.projector)
        self.predictor = BYOLPredictionHead(projector_dim, predictor_hidden_dim, projector_dim)
        self.criterion = BYOLLoss()

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        feats, predictions, targets = self.predict_and_target(views)
        return self.criterion(*predictions, *targets), feats, {}


class MoCoV3(MomentumMethod):
    """MoCo v3 (Chen et al. 2021): BYOL's architecture with a contrastive loss — each view's query
    against the momentum keys of the batch's other view, negatives from the (global) batch, no queue."""

    kind = "mocov3"
    colour = "#332288"

    def __init__(
        self,
        projector_hidden_dim: int = 4096,
        projector_dim: int = 256,
        predictor_hidden_dim: int = 4096,
        temperature: float = 0.2,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # The official ResNet heads (MoCo_ResNet): projector ends in BN without affine, predictor in a Linear.
        self.projector = moco_v3_mlp(self.backbone.out_dim, projector_hidden_dim, projector_dim, last_bn=True)
        self.momentum_projector = frozen_copy(self.projector)
        self.predictor = moco_v3_mlp(projector_dim, predictor_hidden_dim, projector_dim, last_bn=False)
        self.criterion = MoCoV3Loss(temperature, gather_distributed)

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        feats, queries, keys = self.predict_and_target(views)
        loss, top1 = self.criterion(*queries, *keys)
        return loss, feats, {"train/ssl_acc": top1}


class DINO(MomentumMethod):
    """DINO (Caron et al. 2021): the student matches the momentum teacher's centred, sharpened
    softmax over `head_dim` prototypes (cross-entropy across views). The teacher sees the first 2
    views; the student all of them (extra views are same-size crops: no multi-crop at lower size).

    Views of one size go through each network as one batch, as the reference's MultiCropWrapper
    does. `export="teacher"` (default, as DINO's own evaluation and lightly's benchmark) makes the
    teacher the run's `backbone`; the online probe and kNN monitor then use the teacher's features
    of the first global view. `clip_grad` clips each student parameter's gradient norm on its own
    (the reference's `utils.clip_gradients`, not a global norm).
    """

    kind = "dino"
    colour = "#882255"

    def __init__(
        self,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_dim: int = 4096,
        head_batch_norm: bool = False,
        norm_last_layer: bool = True,
        freeze_last_layer_epochs: int = 1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        clip_grad: float | None = 3.0,
        export: str = "teacher",
        **kwargs: Any,
    ) -> None:
        from lightly.loss import DINOLoss
        from lightly.models.modules.heads import DINOProjectionHead

        if export not in ("teacher", "student"):
            raise UserError(f"model.export={export!r} is not valid: DINO exports the teacher or the student (teacher|student).")
        if clip_grad is not None and clip_grad <= 0:
            raise ValueError(f"clip_grad must be > 0 or null, got {clip_grad}")
        super().__init__(export_target=export == "teacher", **kwargs)
        self.clip_grad = clip_grad

        def head() -> nn.Module:
            with warnings.catch_warnings():  # lightly 1.6 builds it with the deprecated nn.utils.weight_norm
                warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
                return DINOProjectionHead(
                    self.backbone.out_dim,
                    head_hidden_dim,
                    head_bottleneck_dim,
                    head_dim,
                    head_batch_norm,
                    freeze_last_layer_epochs,
                    norm_last_layer,
                )

        self.projector = head()
        self.momentum_projector = frozen_copy(self.projector, build=head)  # weight norm: no deepcopy
        self.criterion = Float32(
            DINOLoss(head_dim, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, student_temp, center_momentum)
        )

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        check_views(self, views, 2, at_least=True)
        student_feats = self.online(torch.cat(list(views)))
        student = self.projector(student_feats).chunk(len(views))
        teacher_feats, teacher = self.momentum_forward(torch.cat(list(views[:2])))
        loss = self.criterion(list(teacher.chunk(2)), list(student), epoch=self.current_epoch)
        return loss, teacher_feats if self.export_target else student_feats, {}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.clip_grad is not None:
            for param in [*self.online.parameters(), *self.projector.parameters()]:
                if param.grad is not None:
                    norm = param.grad.norm(2)
                    param.grad.mul_(torch.clamp(self.clip_grad / (norm + 1e-6), max=1.0))

    def on_after_backward(self) -> None:
        # DINO keeps the output layer fixed for its first epoch(s): a stabiliser from the paper's code
        self.projector.cancel_last_layer_gradients(self.current_epoch)
