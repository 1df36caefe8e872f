"""Supervised training: the baseline, and fine-tuning / linear probing from SSL weights."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sslpath.data.loader import Batch
from sslpath.models.base import ImageModel


class Supervised(ImageModel):
    """Backbone + linear head trained with cross-entropy (the baseline)."""

    kind = "baseline"
    colour = "#555555"

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, labels = batch
        logits = self(x).float()
        loss = F.cross_entropy(logits, labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss


class FineTune(Supervised):
    """Supervised training that starts from an SSL backbone (loaded by the entrypoint, see
    `sslpath.models.checkpoint.load_ssl_backbone`); `freeze_backbone=True` is the linear probe."""

    kind = "finetune"
    colour = "#117733"

    def __init__(self, freeze_backbone: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        if self.freeze_backbone:
            self.backbone.eval()  # frozen also means frozen BatchNorm statistics
