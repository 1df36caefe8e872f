"""What every sslpath model shares: a backbone, a linear head, evaluation and optimisation.

For supervised models the head is the classifier; for SSL methods it is the online linear probe.
Test batches return their logits; `sslpath.training.callbacks.TestResults` turns them into results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from lightly.utils.scheduler import cosine_schedule  # the momentum schedule's cosine
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sslpath.data.loader import PAD_LABEL, Batch
from sslpath.models.optim import build_optimizer, parameter_groups, split_settings

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
# Every concrete model class, by kind: filled as classes are defined (ImageModel.__init_subclass__) and read
# through sslpath.models.registry.
MODEL_CLASSES: dict[str, type[ImageModel]] = {}


class ImageModel(L.LightningModule):
    """A model class declares what the rest of sslpath knows it by; defining it registers it (see
    sslpath.models.registry): checkpoints, config checks, records and reports read these."""

    # Its name in config-free places: checkpoint metadata, metrics.json's `model`, report rows. None: an
    # abstract base, not registered.
    kind: ClassVar[str | None] = None
    # Self-supervised: it learns from every training image, labelled or not, and its checkpoint exports a
    # backbone a fine-tune may start from (model.pretrained_ckpt). Supervised stages learn from labels only.
    ssl: ClassVar[bool] = False
    # Its colour in every report figure (fine-tunes of an SSL method take the method's); None: one picked
    # from a colour-blind-safe set by a hash of its kind.
    colour: ClassVar[str | None] = None
    # Validation metrics logged every epoch: the names `optimized_metric` may take (checked before training).
    val_metrics: tuple[str, ...] = ("val/acc", "val/loss")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is None:
            return
        other = MODEL_CLASSES.get(kind)
        if other is not None and other.__qualname__ != cls.__qualname__:  # redefining a class (a reload) is no clash
            raise TypeError(f"model kind {kind!r} of {cls.__qualname__} is already {other.__module__}.{other.__qualname__}'s")
        MODEL_CLASSES[kind] = cls

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
        self.optimizer_factory, self.optimizer_settings = split_settings(optimizer)
        self.scheduler_factory = scheduler
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
        self.log_validation(self(x).float(), labels)

    def log_validation(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.log("val/loss", F.cross_entropy(logits, labels, ignore_index=PAD_LABEL), on_epoch=True, sync_dist=True)
        self.val_acc(logits, labels)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x, labels = batch
        return {"logits": self(x).float(), "labels": labels}

    def parameter_groups(self) -> list[dict]:
        return parameter_groups(self, self.no_decay_norm_bias)

    def run_record(self) -> dict[str, Any]:
        """Values of the finished run that metrics.json records beside its results (none here)."""
        return {}

    def global_batch(self) -> int:
        """Images per optimiser step over every rank: the batch the papers' lr scaling refers to."""
        self.trainer.estimated_stepping_batches  # noqa: B018 (makes Lightning load the training data)
        per_rank = int(self.trainer.train_dataloader.batch_size)
        return per_rank * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def configure_optimizers(self) -> Any:
        settings = self.optimizer_settings
        batch = self.global_batch() if settings.reference_batch else 1
        optimizer = build_optimizer(self.optimizer_factory, settings, self.parameter_groups(), batch)
        if settings.reference_batch:
            log.info(
                "learning rate %.4g = optimizer.lr × global batch %d / optimizer.reference_batch %d",
                optimizer.param_groups[0]["lr"],
                batch,
                settings.reference_batch,
            )
        if self.scheduler_factory is None:
            return optimizer
        epochs = max(1, self.trainer.max_epochs or 1)
        steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // epochs)
        scheduler = self.scheduler_factory(optimizer, steps_per_epoch=steps_per_epoch, max_epochs=epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """optimizer.weight_decay_end: the decayed group's weight decay on a cosine over the run's
        optimiser steps (DINO's schedule; norms, biases and the probe stay at 0)."""
        end = self.optimizer_settings.weight_decay_end
        if end is None:
            return
        optimizer = self.optimizers(use_pl_optimizer=False)
        total = self.trainer.estimated_stepping_batches
        for group in optimizer.param_groups:
            if group.get("role") == "decay":
                start = group.setdefault("weight_decay_start", group["weight_decay"])
                group["weight_decay"] = cosine_schedule(self.trainer.global_step, max(1, int(total)), start, end)
