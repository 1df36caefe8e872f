"""Self-supervised methods (solo-learn's shape): a base with the online linear probe on detached
features and a kNN monitor; each method adds only its heads and loss. This module holds the base and the
methods without a momentum target (SimCLR, Barlow Twins, VICReg); BYOL, MoCo v3 and DINO are in
sslpath.models.momentum_methods. Heads and losses other than SimCLR's are lightly's; defaults and their
sources: docs/methods.md.

`backbone` is always the network a run exports: the online probe, the kNN monitor, the test and
every loader of the checkpoint's `backbone.*` use it (for DINO that is the teacher by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslpath.data.loader import Batch
from sslpath.models.base import ImageModel
from sslpath.models.knn import WeightedKNN
from sslpath.models.losses import Float32, NTXentLoss

# lightly.loss and lightly.models.modules import timm when it is installed (about a second), so each
# method imports its heads and loss where it is built: SimCLR runs and importers of this module don't.

SSLStep = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]  # loss, exported features (view-major), logs
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


class SSLMethod(ImageModel):
    """Trains the backbone with `ssl_step` on the views the data layer prepared.

    The head is an online linear probe on *detached* features, so labels never shape the backbone
    (unless `joint=True`: the reference notebook's design, where the probe loss trains it too).
    The kNN monitor (val/knn_acc) votes validation images by this epoch's training features.
    """

    ssl = True
    val_metrics = (*ImageModel.val_metrics, "val/knn_acc")  # val/knn_acc needs knn_k > 0
    # SimCLR's reference code passes both views through the network as one batch (shared BatchNorm
    # statistics); BYOL, MoCo v3, Barlow Twins and VICReg's pass each view on its own.
    joint_views = False

    def __init__(self, joint: bool = False, knn_k: int = 20, knn_temperature: float = 0.07, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.joint = joint
        self.knn = WeightedKNN(knn_k, knn_temperature, self.num_classes) if knn_k > 0 else None

    def ssl_step(self, views: Sequence[torch.Tensor]) -> SSLStep:
        """(SSL loss, `backbone` features of the views the probe learns from, concatenated view by
        view, extra values to log)."""
        raise NotImplementedError

    def project_pair(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone features of both views (concatenated) and `self.projector`'s embedding of each:
        one forward of the 2N views when `joint_views`, else one per view, so each view's BatchNorm
        layers normalise with that view's own batch statistics."""
        check_views(self, views, 2)
        if self.joint_views:
            feats = self.backbone(torch.cat(list(views)))
            z1, z2 = self.projector(feats).chunk(2)
            return feats, z1, z2
        f1, f2 = self.backbone(views[0]), self.backbone(views[1])
        return torch.cat([f1, f2]), self.projector(f1), self.projector(f2)

    def parameter_groups(self) -> list[dict]:
        """The method's groups, and the online probe apart without weight decay: it is a monitor, not
        part of the method (lightly's and solo-learn's benchmarks do the same; LARS then leaves it
        unadapted)."""
        head = {id(p) for p in self.head.parameters()}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in head]} for g in super().parameter_groups()]
        return [*(g for g in groups if g["params"]), {"params": list(self.head.parameters()), "weight_decay": 0.0}]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        *views, labels = batch
        ssl_loss, feats, logs = self.ssl_step(views)
        probe_labels = labels.repeat(len(feats) // len(labels))
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
        x, labels = batch
        feats = self.backbone(x)  # once: the probe's logits and the kNN monitor share it
        self.log_validation(self.head(feats).float(), labels)
        if self.knn is not None and not self.trainer.sanity_checking:
            self.knn.update(test_feats=feats, test_labels=labels)

    def on_validation_epoch_end(self) -> None:
        if self.knn is not None and self.knn.ready:
            self.log("val/knn_acc", self.knn.compute())


class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020): MLP projector and NT-Xent over the 2N views of a batch."""

    kind = "simclr"
    colour = "#CC6677"
    joint_views = True  # google-research/simclr concatenates the views into one batch of 2N

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
    colour = "#AA4499"

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
    colour = "#44AA99"

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
