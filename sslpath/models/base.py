"""What every sslpath model shares: a backbone, a linear head, evaluation and optimisation.

For supervised models the head is the classifier; for SSL methods it is the online linear probe.
Test batches return their logits; `sslpath.training.callbacks.TestResults` turns them into results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sslpath.data.loader import PAD_LABEL
from sslpath.models.optim import parameter_groups

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
Batch = tuple[torch.Tensor, ...]


class ImageModel(L.LightningModule):
    kind = "model"
    # SSL pretraining learns from every training image; supervised stages only from labelled ones.
    trains_on_unlabelled = False
    # Validation metrics logged every epoch: the names `optimized_metric` may take (checked before training).
    val_metrics: tuple[str, ...] = ("val/acc", "val/loss")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        no_decay_norm_bias: bool = True,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_classes)
        self.num_classes = num_classes
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.no_decay_norm_bias = no_decay_norm_bias
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=PAD_LABEL)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=PAD_LABEL)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        x, labels = batch
        logits = self(x).float()
        self.log("val/loss", F.cross_entropy(logits, labels, ignore_index=PAD_LABEL), on_epoch=True, sync_dist=True)
        self.val_acc(logits, labels)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x, labels = batch
        return {"logits": self(x).float(), "labels": labels}

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).float().softmax(dim=1)

    def configure_optimizers(self) -> Any:
        params = parameter_groups(self, self.no_decay_norm_bias)
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        epochs = max(1, self.trainer.max_epochs or 1)
        steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // epochs)
        scheduler = self.scheduler_factory(optimizer, steps_per_epoch=steps_per_epoch, max_epochs=epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
