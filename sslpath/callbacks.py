"""Lightning callbacks that write artefacts beyond metrics."""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sslpath.errors import UserError

log = logging.getLogger(__name__)


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
        feats = torch.cat([pl_module.features(chunk.to(pl_module.device)).float().cpu() for chunk in images.split(512)])
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
    """Reseeds the global RNG from (seed, epoch) so a resumed run draws the same augmentations.

    Lightning restores weights, optimiser and schedule on resume, but not the RNG that kornia's
    augmentation draws from; without this a resumed run would diverge from an uninterrupted one.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(self.seed * 100_003 + trainer.current_epoch + 1)


class FiniteLoss(L.Callback):
    """Stops at the first NaN/inf training loss, before it reaches a checkpoint."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
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


class SaveOnInterrupt(L.Callback):
    """Writes last.ckpt when SIGTERM (pre-emption) or Ctrl-C stops training mid-epoch."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == "fit":
            path = f"{self.dirpath}/last.ckpt"
            trainer.save_checkpoint(path)
            log.warning("interrupted: saved %s; resume with ckpt_path=last (or resume=RUN_DIR)", path)
