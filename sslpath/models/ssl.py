"""Self-supervised methods (solo-learn's shape): a base with the online linear probe on detached
features and a kNN monitor; each method adds only its heads and loss. Heads, losses and momentum
updates other than SimCLR's are lightly's; defaults and their sources: docs/methods.md."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from sslpath.models.base import Batch, ImageModel
from sslpath.models.knn import WeightedKNN
from sslpath.models.losses import BYOLLoss, Float32, MoCoV3Loss, NTXentLoss

# lightly.loss and lightly.models.modules import timm when it is installed (about a second), so each
# method imports its heads and loss where it is built: SimCLR runs and importers of this module don't.

SSLStep = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]  # loss, features of all views, logs
Pair = tuple[torch.Tensor, torch.Tensor]  # one tensor per view


def mlp(dims: Sequence[int], batch_norm: bool = True) -> nn.Sequential:
    """Linear layers through `dims`, BatchNorm + ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1], strict=True):
        layers += [nn.Linear(d_in, d_out), *([nn.BatchNorm1d(d_out)] if batch_norm else []), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(dims[-2], dims[-1]))


def check_views(method: nn.Module, views: Sequence[torch.Tensor], count: int, at_least: bool = False) -> None:
    if len(views) < count if at_least else len(views) != count:
        need = f"{'at least ' if at_least else ''}{count}"
        raise ValueError(f"{type(method).__name__} takes {need} views per image, got {len(views)} (model.input.views)")


def frozen_copy(module: nn.Module, build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A momentum (EMA) copy: same weights, requires_grad=False, so `parameter_groups` leaves it out of
    the optimiser. `build` makes a fresh instance where deepcopy fails (weight-normalised layers)."""
    twin = copy.deepcopy(module) if build is None else build()
    if build is not None:
        twin.load_state_dict(module.state_dict())
    deactivate_requires_grad(twin)
    return twin


class SSLMethod(ImageModel):
    """Trains the backbone with `ssl_step` on the views the data layer prepared.

    The head is an online linear probe on *detached* features, so labels never shape the backbone
    (unless `joint=True`: the reference notebook's design, where the probe loss trains it too).
    The kNN monitor (val/knn_acc) votes validation images by this epoch's training features.
    """

    trains_on_unlabelled = True
    val_metrics = (*ImageModel.val_metrics, "val/knn_acc")  # val/knn_acc needs knn_k > 0

    def __init__(self, joint: bool = False, knn_k: int = 20, knn_temperature: float = 0.07, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.joint = joint
        self.knn = WeightedKNN(knn_k, knn_temperature, self.num_classes) if knn_k > 0 else None

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        """(SSL loss, backbone features of all views concatenated in order, extra values to log)."""
        raise NotImplementedError

    def project_pair(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone features of both views (one pass) and `self.projector`'s embedding of each view."""
        check_views(self, views, 2)
        feats = self.backbone(torch.cat(list(views)))
        z1, z2 = self.projector(feats).chunk(2)
        return feats, z1, z2

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        *views, labels = batch
        ssl_loss, feats, logs = self.ssl_step(views)
        probe_labels = labels.repeat(len(views))
        logits = self.head(feats if self.joint else feats.detach()).float()
        labelled = probe_labels >= 0
        probe_loss = F.cross_entropy(logits[labelled], probe_labels[labelled]) if labelled.any() else logits.sum() * 0.0
        self.train_acc(logits, probe_labels)
        if self.knn is not None:
            self.knn.update(train_feats=feats[: len(labels)], train_labels=labels)
        losses = {"train/ssl_loss": ssl_loss, "train/loss": probe_loss, **logs}
        self.log_dict(losses, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/ssl_loss_step", ssl_loss, on_step=True, on_epoch=False, prog_bar=True)
        return ssl_loss + probe_loss

    def on_train_epoch_start(self) -> None:
        if self.knn is not None:
            self.knn.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self.knn is not None and not self.trainer.sanity_checking:
            x, labels = batch
            self.knn.update(test_feats=self.backbone(x), test_labels=labels)

    def on_validation_epoch_end(self) -> None:
        if self.knn is not None and self.knn.ready:
            self.log("val/knn_acc", self.knn.compute())


class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020): MLP projector and NT-Xent over the 2N views of a batch."""

    kind = "simclr"

    def __init__(
        self,
        projector_dims: Sequence[int] = (512, 128),
        projector_norm: bool = True,
        temperature: float = 0.2,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # projector_dims: hidden layer widths, then the embedding width; the input is the backbone's.
        self.projector = mlp([self.backbone.out_dim, *projector_dims], projector_norm)
        self.criterion = NTXentLoss(temperature, gather_distributed)

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        feats, z1, z2 = self.project_pair(views)
        loss, top1 = self.criterion(z1, z2)
        return loss, feats, {"train/ssl_acc": top1}


class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al. 2021): the cross-correlation of the two views' batch-normalised
    embeddings is pushed towards the identity; no negatives, no momentum copy."""

    kind = "barlowtwins"

    def __init__(
        self,
        projector_hidden_dim: int = 2048,
        projector_dim: int = 2048,
        lambda_param: float = 5e-3,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        from lightly.loss import BarlowTwinsLoss
        from lightly.models.modules.heads import BarlowTwinsProjectionHead

        super().__init__(**kwargs)
        self.projector = BarlowTwinsProjectionHead(self.backbone.out_dim, projector_hidden_dim, projector_dim)
        # gather_distributed averages the ranks' cross-correlations (each normalised on its own batch)
        self.criterion = Float32(BarlowTwinsLoss(lambda_param, gather_distributed))

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        feats, z1, z2 = self.project_pair(views)
        return self.criterion(z1, z2), feats, {}


class VICReg(SSLMethod):
    """VICReg (Bardes et al. 2022): invariance (MSE between views) plus variance and covariance
    regularisers on each view's embeddings, which keep them from collapsing without negatives."""

    kind = "vicreg"

    def __init__(
        self,
        projector_hidden_dim: int = 2048,
        projector_dim: int = 2048,
        projector_layers: int = 3,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        from lightly.loss import VICRegLoss
        from lightly.models.modules.heads import VICRegProjectionHead

        super().__init__(**kwargs)
        self.projector = VICRegProjectionHead(self.backbone.out_dim, projector_hidden_dim, projector_dim, projector_layers)
        # gather_distributed: variance and covariance over the global batch (with gradients)
        loss = VICRegLoss(invariance_weight, variance_weight, covariance_weight, gather_distributed)
        self.criterion = Float32(loss)

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        feats, z1, z2 = self.project_pair(views)
        return self.criterion(z1, z2), feats, {}


class MomentumMethod(SSLMethod):
    """A method whose targets come from a momentum (EMA) copy of the backbone and projector.

    Subclasses set `projector` and `momentum_projector = frozen_copy(projector)`. After every
    optimiser step θ_m ← m·θ_m + (1 − m)·θ (lightly's `update_momentum`), m rising from
    `momentum_start` to `momentum_end` on a cosine over the run's optimiser steps (BYOL's schedule,
    also MoCo v3's and DINO's). The copies are submodules, so checkpoints keep them (a resumed run
    continues its targets); their names start with `momentum_`, so `load_ssl_backbone`, which takes
    only `backbone.*`, never loads them into a fine-tune.
    """

    def __init__(self, momentum_start: float = 0.99, momentum_end: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= momentum_start <= momentum_end <= 1:
            raise ValueError(f"need 0 <= momentum_start <= momentum_end <= 1, got {momentum_start}, {momentum_end}")
        self.momentum_start, self.momentum_end = momentum_start, momentum_end
        self.momentum_backbone = frozen_copy(self.backbone)

    @torch.no_grad()
    def momentum_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.momentum_projector(self.momentum_backbone(x))

    def momentum(self, step: int) -> float:
        """m after optimiser step `step` (0-based) of the run."""
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):  # max_epochs=-1 without max_steps: no schedule to follow
            return self.momentum_start
        return cosine_schedule(step, int(total), self.momentum_start, self.momentum_end)

    @torch.no_grad()
    def update_momentum_copies(self, m: float) -> None:
        update_momentum(self.backbone, self.momentum_backbone, m)
        update_momentum(self.projector, self.momentum_projector, m)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The papers' order: the optimiser updates θ, then the copies follow θ. Hooked here rather
        than per batch, so gradient accumulation still gives one update per optimiser step."""
        super().optimizer_step(*args, **kwargs)
        # Lightning counts this step in global_step only after the hook returns: it is this step's 0-based index
        self.update_momentum_copies(self.momentum(self.trainer.global_step))

    def predict_and_target(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, Pair, Pair]:
        """(online backbone features of both views, online predictions (p1, p2), momentum targets (t1, t2))."""
        feats, z1, z2 = self.project_pair(views)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        t1, t2 = self.momentum_forward(torch.cat(list(views))).chunk(2)
        return feats, (p1, p2), (t1, t2)


class BYOL(MomentumMethod):
    """BYOL (Grill et al. 2020): the online network predicts the momentum network's projection of
    the other view; no negatives — the predictor and the slow target prevent collapse."""

    kind = "byol"

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

    def __init__(
        self,
        projector_hidden_dim: int = 4096,
        projector_dim: int = 256,
        predictor_hidden_dim: int = 4096,
        temperature: float = 0.2,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        from lightly.models.modules.heads import MoCoProjectionHead

        super().__init__(**kwargs)
        # 2-layer MLPs with BatchNorm in every layer, as the official ResNet code builds them
        self.projector = MoCoProjectionHead(self.backbone.out_dim, projector_hidden_dim, projector_dim, 2, batch_norm=True)
        self.momentum_projector = frozen_copy(self.projector)
        self.predictor = MoCoProjectionHead(projector_dim, predictor_hidden_dim, projector_dim, 2, batch_norm=True)
        self.criterion = MoCoV3Loss(temperature, gather_distributed)

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        feats, queries, keys = self.predict_and_target(views)
        loss, top1 = self.criterion(*queries, *keys)
        return loss, feats, {"train/ssl_acc": top1}


class DINO(MomentumMethod):
    """DINO (Caron et al. 2021): the student matches the momentum teacher's centred, sharpened
    softmax over `head_dim` prototypes (cross-entropy across views). The teacher sees the first 2
    views; the student all of them (extra views are same-size crops: no multi-crop at lower size)."""

    kind = "dino"

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
        **kwargs: Any,
    ) -> None:
        from lightly.loss import DINOLoss
        from lightly.models.modules.heads import DINOProjectionHead

        super().__init__(**kwargs)

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
        feats = self.backbone(torch.cat(list(views)))
        student = self.projector(feats).chunk(len(views))
        teacher = self.momentum_forward(torch.cat(list(views[:2]))).chunk(2)
        return self.criterion(list(teacher), list(student), epoch=self.current_epoch), feats, {}

    def on_after_backward(self) -> None:
        # DINO keeps the output layer fixed for its first epoch(s): a stabiliser from the paper's code
        self.projector.cancel_last_layer_gradients(self.current_epoch)
