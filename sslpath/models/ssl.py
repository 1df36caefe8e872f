"""Self-supervised methods (solo-learn's shape): a base with the online linear probe on detached
features and a kNN monitor; each method adds only its heads and loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslpath.losses import NTXentLoss
from sslpath.metrics import WeightedKNN
from sslpath.models.base import Batch, ImageModel


def mlp(dims: Sequence[int], batch_norm: bool = True) -> nn.Sequential:
    """Linear layers through `dims`, BatchNorm + ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-2], dims[1:-1]):
        layers += [nn.Linear(d_in, d_out), *([nn.BatchNorm1d(d_out)] if batch_norm else []), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(dims[-2], dims[-1]))


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

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(SSL loss, backbone features of all views concatenated in order, extra values to log)."""
        raise NotImplementedError

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
        self.log_dict({"train/ssl_loss": ssl_loss, "train/loss": probe_loss, **logs}, on_step=False, on_epoch=True, sync_dist=True)
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

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if len(views) != 2:
            raise ValueError(f"SimCLR takes 2 views per image, got {len(views)} (model.input.views)")
        feats = self.backbone(torch.cat(list(views)))
        z1, z2 = self.projector(feats).chunk(2)
        loss, top1 = self.criterion(z1, z2)
        return loss, feats, {"train/ssl_acc": top1}
