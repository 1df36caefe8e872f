"""Lightning callbacks: test results and their files, checkpoint metadata, and run hygiene."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sslpath.core.errors import NonFiniteLoss
from sslpath.data.loader import PAD_LABEL
from sslpath.results.artifacts import write_examples, write_test_predictions
from sslpath.results.metrics import classification_results, evidence_results
from sslpath.results.stats import Bootstrap
from sslpath.training.checkpoint_writer import slim_checkpoint

log = logging.getLogger(__name__)


class TestResults(L.Callback):
    """Collects the test logits, computes the results over the whole split (every rank's share,
    padding dropped) and writes test_predictions.csv and test_examples.npz into `dirpath`.

    `results` holds the numbers for metrics.json after `trainer.test`, with their bootstrap intervals and
    calibration error (`bootstrap`, `ece_bins`: the config's `eval` settings).
    """

    def __init__(self, dirpath: str | Path, bootstrap: Bootstrap, ece_bins: int, examples: int = 36, seed: int = 0) -> None:
        self.dirpath, self.examples, self.seed = Path(dirpath), examples, seed
        self.bootstrap, self.ece_bins = bootstrap, ece_bins
        self.results: dict[str, Any] = {}
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logits, self._labels, self.results = [], [], {}

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
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
        self.results.update(evidence_results(logits, labels, self.bootstrap, self.ece_bins))  # issue 18: intervals, ECE
        scalars = {
            f"test/{k[5:]}": v for k, v in self.results.items() if k in ("test_loss", "test_acc", "test_auc") and v is not None
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
        if trainer.is_global_zero:
            probs = logits.softmax(dim=1).numpy()
            write_test_predictions(self.dirpath, probs, labels.numpy(), class_names)
            write_examples(self.dirpath, trainer.datamodule.splits["test"], probs, self.examples, self.seed)


class CheckpointMetadata(L.Callback):
    """Writes `sslpath.models.checkpoint.Metadata` into every checkpoint, so inference rebuilds the
    model from plain, validated values instead of code."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # The stain normalisation is fitted in the data module's setup, after the metadata was made.
        stain = getattr(trainer.datamodule, "stain_record", None)
        checkpoint["sslpath"] = dict(self.metadata) | {"stain_norm": stain}


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

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            ckpt = trainer.checkpoint_callback
            last = getattr(ckpt, "last_model_path", "") or "none yet"
            raise NonFiniteLoss(loss.item(), trainer.current_epoch, trainer.global_step, last)


class InterruptCheckpoint(L.Callback):
    """Saves `<dirpath>/<filename>.ckpt` when SIGTERM (pre-emption) or Ctrl-C stops a fit.

    Not Lightning's OnExceptionCheckpoint: it also saves after a NaN loss or a bug (a checkpoint a
    resume must never start from), and its presence makes `fit(ckpt_path=None)` silently resume
    from the newest checkpoint in the run dir, bypassing sslpath's checks.
    """

    def __init__(self, dirpath: str, filename: str = "interrupted") -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path, weights_only=False)
            log.warning("interrupted: saved %s; resume with resume=RUN_DIR", self.path)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.path.unlink(missing_ok=True)  # a finished fit's last.ckpt supersedes it


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that survives a moved or copied run dir.

    On resume it maps the paths recorded in the checkpoint (best, last, top-k) from the old run dir
    to the new one, so best-model tracking continues instead of restarting (which would also leave
    a stale best file and a `last-v1.ckpt` beside the real one).
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = str(state_dict.get("dirpath", self.dirpath)), str(self.dirpath)
        if old != new:
            move = lambda p: new + p[len(old) :] if isinstance(p, str) and p.startswith(old) else p  # noqa: E731
            state_dict = {k: move(v) for k, v in state_dict.items()}
            state_dict["best_k_models"] = {move(k): v for k, v in state_dict.get("best_k_models", {}).items()}
            state_dict["dirpath"] = new
        best = state_dict.get("best_model_path")
        if best and not Path(best).is_file():
            # A checkpoint from another run (ckpt_path=FILE): its best file is not here, so track anew.
            state_dict = {
                **state_dict,
                "best_model_path": "",
                "best_model_score": None,
                "best_k_models": {},
                "kth_best_model_path": "",
                "last_model_path": "",
            }
        super().load_state_dict(state_dict)


class EpochLog(L.Callback):
    """One line per epoch (train and validation metrics) in the console and the run's train.log."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        shown = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith(("train/", "val/"))}
        text = "  ".join(f"{k}={v:.4f}" for k, v in shown.items() if not k.endswith("_step"))
        log.info("epoch %d/%d  %s", trainer.current_epoch + 1, trainer.max_epochs, text)


class SlimBestCheckpoint(L.Callback):
    """After fit, strips the best checkpoint to weights and metadata (about a third of its size):
    inference and fine-tuning need nothing else, and last.ckpt stays resumable."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if trainer.is_global_zero and best and Path(best).name != "last.ckpt":
            slim_checkpoint(best)


class KeepLastCheckpoint(L.Callback):
    """`keep=false` deletes last.ckpt once the run has been tested (a finished sweep job needs only
    its best checkpoint), saving about 130 MB per ResNet-18 run."""

    def __init__(self, dirpath: str, keep: bool = True) -> None:
        self.path, self.keep = Path(dirpath) / "last.ckpt", keep

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.keep and trainer.is_global_zero:
            self.path.unlink(missing_ok=True)
