"""Lightning callbacks: test results and their files, checkpoint metadata, and run hygiene."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sslpath.data.loader import PAD_LABEL
from sslpath.errors import UserError
from sslpath.files import atomic_write_bytes, atomic_write_text
from sslpath.metrics import classification_results

log = logging.getLogger(__name__)


class TestResults(L.Callback):
    """Collects the test logits, computes the results over the whole split (every rank's share,
    padding dropped) and writes test_predictions.csv and test_examples.npz into `dirpath`.

    `results` holds the numbers for metrics.json after `trainer.test`.
    """

    def __init__(self, dirpath: str | Path, examples: int = 36, seed: int = 0) -> None:
        self.dirpath, self.examples, self.seed = Path(dirpath), examples, seed
        self.results: dict[str, Any] = {}
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._labels, self.results = [], [], {}

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._logits.append(outputs["logits"].detach())
        self._labels.append(outputs["labels"].detach())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logits, labels = torch.cat(self._logits), torch.cat(self._labels)
        if trainer.world_size > 1:
            # BatchLoader gave rank r the positions r, r+W, …: interleave the ranks back into split order.
            logits = pl_module.all_gather(logits).transpose(0, 1).flatten(0, 1)
            labels = pl_module.all_gather(labels).transpose(0, 1).flatten(0, 1)
        keep = labels != PAD_LABEL
        logits, labels = logits[keep].cpu(), labels[keep].cpu()
        class_names = trainer.datamodule.class_names
        self.results = classification_results(logits, labels, class_names)
        scalars = {f"test/{k[5:]}": v for k, v in self.results.items() if k in ("test_loss", "test_acc", "test_auc") and v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        if trainer.is_global_zero:
            probs = logits.softmax(dim=1).numpy()
            self._write_predictions(probs, labels.numpy(), class_names)
            self._write_examples(trainer.datamodule.splits["test"], probs)

    def _write_predictions(self, probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
        """One row per test image: index, true label, predicted label, probability per class."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["index", "label", "pred"] + [f"p_{name}" for name in class_names])
        for i, (p, y) in enumerate(zip(probs, labels)):
            writer.writerow([i, int(y), int(p.argmax())] + [f"{v:.6f}" for v in p])
        atomic_write_text(self.dirpath / "test_predictions.csv", buf.getvalue())

    def _write_examples(self, split: Any, probs: np.ndarray) -> None:
        """A seeded handful of test images with labels and predictions, for the report's grids."""
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(split), generator=gen)[: self.examples].sort().values
        buf = io.BytesIO()
        np.savez(
            buf,
            index=idx.numpy(),
            images=split.images[idx.to(split.images.device)].permute(0, 2, 3, 1).cpu().numpy(),  # N×H×W×3 RGB
            labels=split.labels[idx.to(split.labels.device)].cpu().numpy(),
            probs=probs[idx.numpy()],
        )
        atomic_write_bytes(self.dirpath / "test_examples.npz", buf.getvalue())


class CheckpointMetadata(L.Callback):
    """Writes `sslpath.checkpoints.Metadata` into every checkpoint, so inference rebuilds the
    model from plain, validated values instead of code."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["sslpath"] = dict(self.metadata)


class EmbeddingProjector(L.Callback):
    """Test-set embeddings for TensorBoard's Projector: features, class-name metadata, image sprite.

    Lets a user see whether the tissue classes cluster (and how SSL features differ from supervised).
    """

    def __init__(self, max_images: int = 2000, seed: int = 0) -> None:
        self.max_images, self.seed = max_images, seed

    @torch.no_grad()
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        datamodule = trainer.datamodule
        if not loggers or not trainer.is_global_zero or datamodule is None or self.max_images <= 0:
            return
        split = datamodule.splits["test"]
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(split), generator=gen)[: self.max_images].sort().values.to(split.images.device)
        images, labels = split.images[idx], split.labels[idx]
        was_training = pl_module.training
        pl_module.eval()
        feats = torch.cat(
            [pl_module.backbone(datamodule.transform(chunk.to(pl_module.device))).float().cpu() for chunk in images.split(512)]
        )
        pl_module.train(was_training)
        names = datamodule.class_names
        loggers[0].experiment.add_embedding(
            feats,
            metadata=[names[int(y)] for y in labels],
            label_img=images.float().cpu() / 255,
            tag=f"test_embeddings/{pl_module.kind}",
            global_step=trainer.global_step,
        )
        loggers[0].experiment.flush()


class EpochSeed(L.Callback):
    """Reseeds the RNG from (seed, epoch, rank) so a resumed run draws the same augmentations.

    Lightning restores weights, optimiser and schedule on resume, but not the RNG that kornia's
    augmentation draws from. The rank term gives each DDP process its own augmentations.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(self.seed * 100_003 + trainer.current_epoch + 1 + 7_919 * trainer.global_rank)


class FiniteLoss(L.Callback):
    """Stops at the first NaN/inf training loss, before it reaches a checkpoint."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            ckpt = trainer.checkpoint_callback
            last = getattr(ckpt, "last_model_path", "") or "none yet"
            raise UserError(
                f"the training loss became {loss.item()} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}. Lower the learning rate (optimizer.lr), use "
                "trainer.precision=32-true, or check the data for broken images. The last good "
                f"checkpoint is kept: {last}."
            )


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Lightning's OnExceptionCheckpoint for pre-emption (SIGTERM) and Ctrl-C only: a NaN loss or a
    bug must never become the checkpoint a resume starts from. Removed after a successful fit."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == "fit":
            super().on_exception(trainer)
            log.warning("interrupted: saved %s; resume with resume=RUN_DIR", self.ckpt_path)
