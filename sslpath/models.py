"""The three LightningModules: supervised baseline, SimCLR, and fine-tuning from SimCLR.

All share `Classifier`: a backbone, a linear head, on-device preprocessing (uint8 -> augmented,
normalised float), validation and test metrics. SimCLR's head is its online linear probe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_auroc

from sslpath.augment import Normalize, Pipeline
from sslpath.backbones import ResNetFeatures
from sslpath.checkpoints import load_checkpoint
from sslpath.errors import UserError
from sslpath.losses import gather_views, nt_xent

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class Classifier(L.LightningModule):
    kind = "classifier"
    # SSL pretraining learns from every training image; supervised stages only from labelled ones.
    trains_on_unlabelled = False
    # Validation metrics logged every epoch: the names `optimized_metric` may take (checked before training).
    val_metrics: tuple[str, ...] = ("val/acc", "val/loss")

    def __init__(
        self,
        backbone: ResNetFeatures,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        augment: nn.Module | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_classes)
        self.augment = augment if augment is not None else Pipeline()
        self.normalize = Normalize(mean, std)
        self.num_classes = num_classes
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.channels_last = channels_last
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=-1)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        # Set by the entrypoint: plain data (config, class names) saved into every checkpoint so
        # a model can be rebuilt from weights alone, without unpickling code.
        self.checkpoint_meta: dict[str, Any] = {}
        self._test_logits: list[torch.Tensor] = []
        self._test_labels: list[torch.Tensor] = []
        self.test_results: dict[str, Any] = {}
        self.test_predictions: dict[str, np.ndarray] = {}
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()

    # -- preprocessing -------------------------------------------------------------------------

    def prepare(self, images: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """uint8 N×C×H×W on device -> (augmented) normalised float batch."""
        x = Normalize.to_unit(images)
        if augment:
            x = self.augment(x)
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(images))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    # -- evaluation ----------------------------------------------------------------------------

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(self.prepare(images))
        self.log("val/loss", F.cross_entropy(logits.float(), labels), on_epoch=True, sync_dist=True)
        self.val_acc(logits, labels)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self._test_logits.clear()
        self._test_labels.clear()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self._test_logits.append(self(self.prepare(images)).float())
        self._test_labels.append(labels)

    def on_test_epoch_end(self) -> None:
        logits, labels = torch.cat(self._test_logits), torch.cat(self._test_labels)
        if self.trainer.world_size > 1:
            # BatchLoader gave rank r the images r, r+W, r+2W, … padded to equal shares: interleave
            # the ranks back into split order and drop the padding, so no image counts twice.
            n = len(self.trainer.datamodule.splits["test"])
            logits = self.all_gather(logits).transpose(0, 1).flatten(0, 1)[:n]
            labels = self.all_gather(labels).transpose(0, 1).flatten(0, 1)[:n]
        probs = logits.softmax(dim=1)
        loss = F.cross_entropy(logits, labels).item()
        acc = multiclass_accuracy(probs, labels, self.num_classes, average="micro").item()
        auc = multiclass_auroc(probs, labels, self.num_classes, average="macro").item()
        per_class = multiclass_accuracy(probs, labels, self.num_classes, average=None).tolist()
        self.log_dict({"test/loss": loss, "test/acc": acc, "test/auc": auc})
        self.test_results = {"test_loss": loss, "test_acc": acc, "test_auc": auc, "per_class_acc": per_class}
        self.test_predictions = {"probs": probs.cpu().numpy(), "labels": labels.cpu().numpy()}
        self._test_logits.clear()
        self._test_labels.clear()

    # -- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sslpath"] = {"kind": self.kind, **self.checkpoint_meta}


class Supervised(Classifier):
    """Backbone + linear head trained with cross-entropy (the baseline)."""

    kind = "baseline"

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(self.prepare(images, augment=True))
        loss = F.cross_entropy(logits.float(), labels)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss


class FineTune(Supervised):
    """Supervised training that starts from an SSL checkpoint's backbone; optionally frozen (linear probe)."""

    kind = "finetune"

    def __init__(self, pretrained_ckpt: str | None = None, freeze_backbone: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pretrained_ckpt = pretrained_ckpt
        self.freeze_backbone = freeze_backbone
        if pretrained_ckpt is not None:
            load_ssl_backbone(self.backbone, pretrained_ckpt)
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def on_train_epoch_start(self) -> None:
        if self.freeze_backbone:
            self.backbone.eval()  # frozen also means frozen BatchNorm statistics


class SimCLR(Classifier):
    """SimCLR with an online linear probe (solo-learn/lightly style) and a kNN monitor.

    The probe sees detached features, so labels never shape the backbone, unless `joint=True`
    (the reference notebook's design, where the classifier loss also trains the backbone).
    """

    kind = "ssl"
    trains_on_unlabelled = True
    val_metrics = (*Classifier.val_metrics, "val/knn_acc")  # val/knn_acc needs knn_k > 0

    def __init__(
        self,
        projector_dims: Sequence[int] = (512, 512, 128),
        projector_norm: bool = True,
        temperature: float = 0.2,
        clean_view: bool = False,
        joint: bool = False,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        dims = list(projector_dims)
        if dims[0] != self.backbone.out_dim:
            raise UserError(f"model.projector_dims must start at the backbone width {self.backbone.out_dim}, got {dims}.")
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-2], dims[1:-1]):
            norm = [nn.BatchNorm1d(d_out)] if projector_norm else []
            layers += [nn.Linear(d_in, d_out), *norm, nn.ReLU(inplace=True)]
        self.projector = nn.Sequential(*layers, nn.Linear(dims[-2], dims[-1]))
        self.temperature, self.clean_view, self.joint = temperature, clean_view, joint
        self.knn_k, self.knn_temperature = knn_k, knn_temperature
        self._bank: tuple[torch.Tensor, torch.Tensor] | None = None
        self._knn_correct = self._knn_total = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        x = Normalize.to_unit(images)
        view1 = self.normalize(x) if self.clean_view else self.normalize(self.augment(x))
        view2 = self.normalize(self.augment(x))
        views = torch.cat([view1, view2])
        if self.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        h = self.backbone(views)
        z1, z2 = self.global_views(*self.projector(h).chunk(2))
        ssl_loss, ssl_acc = nt_xent(z1, z2, self.temperature)

        probe_labels = labels.repeat(2)
        logits = self.head(h if self.joint else h.detach())
        labelled = probe_labels >= 0
        probe_loss = (
            F.cross_entropy(logits[labelled].float(), probe_labels[labelled]) if labelled.any() else logits.sum() * 0.0
        )
        self.train_acc(logits, probe_labels)
        self.log_dict(
            {"train/ssl_loss": ssl_loss, "train/ssl_acc": ssl_acc, "train/loss": probe_loss},
            on_step=False, on_epoch=True, sync_dist=True,
        )
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/ssl_loss_step", ssl_loss, on_step=True, on_epoch=False, prog_bar=True)
        return ssl_loss + probe_loss

    def global_views(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Under DDP, every rank's embeddings: negatives from the global batch, gradients flow back."""
        if self.trainer.world_size == 1:
            return z1, z2
        return gather_views(z1, z2, partial(self.all_gather, sync_grads=True))

    # -- kNN monitor: weighted kNN on L2-normalised features of the labelled training images --

    def on_validation_epoch_start(self) -> None:
        self._bank, self._knn_correct, self._knn_total = None, 0, 0
        datamodule = self.trainer.datamodule
        if self.knn_k <= 0 or datamodule is None or self.trainer.sanity_checking:
            return
        feats, labels = [], []
        for images, y in datamodule.labelled_train_loader():
            images, y = images.to(self.device), y.to(self.device)
            feats.append(F.normalize(self.features(images).float(), dim=1))
            labels.append(y)
        self._bank = (torch.cat(feats), torch.cat(labels))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self._bank is not None:
            images, labels = batch
            feats = F.normalize(self.features(images).float(), dim=1)
            preds = weighted_knn(feats, *self._bank, self.knn_k, self.knn_temperature, self.num_classes)
            self._knn_correct += int((preds == labels).sum())
            self._knn_total += len(labels)

    def on_validation_epoch_end(self) -> None:
        if self._knn_total:
            self.log("val/knn_acc", self._knn_correct / self._knn_total, sync_dist=True)
        self._bank = None


def weighted_knn(
    feats: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int, temperature: float, num_classes: int
) -> torch.Tensor:
    """Class votes of the k most similar bank entries, weighted by exp(similarity / T) (Wu et al. 2018)."""
    sim = feats @ bank.T
    top_sim, top_idx = sim.topk(min(k, bank.shape[0]), dim=1)
    weights = (top_sim / temperature).exp()
    votes = torch.zeros(feats.shape[0], num_classes, device=feats.device)
    votes.scatter_add_(1, bank_labels[top_idx], weights)
    return votes.argmax(dim=1)


def load_ssl_backbone(backbone: nn.Module, path: str) -> None:
    """Copy an SSL checkpoint's backbone weights into `backbone`, refusing anything else."""
    ckpt = load_checkpoint(path)
    kind = ckpt.get("sslpath", {}).get("kind")
    if kind != "ssl":
        raise UserError(
            f"model.pretrained_ckpt={path} is a {kind or 'non-sslpath'} checkpoint, not an SSL one. Pass a "
            "checkpoint written by `model=ssl` (its run dir's checkpoints/best-*.ckpt), or leave "
            "pretrained_ckpt unset to pretrain first."
        )
    state = {k.removeprefix("backbone."): v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UserError(
            f"the backbone in {path} does not fit this model ({first}). Use the same "
            "model.backbone.stem as the SSL run that wrote it."
        ) from None


MODEL_KINDS: dict[str, type[Classifier]] = {cls.kind: cls for cls in (Supervised, FineTune, SimCLR)}
