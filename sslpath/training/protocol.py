"""Label-efficiency protocol: how long a run that sees a fraction of the labels trains (`budget`) and
which checkpoint it is tested with (`selection`), set in conf/train.yaml and
conf/experiment/label_efficiency.yaml (docs/methods.md, "Label-efficiency protocol", explains the choices).

- budget=epochs: trainer.max_epochs passes over the labelled subset, so 1 % of the labels gets about
  1 % of the optimiser steps; budget=steps: as many optimiser steps as trainer.max_epochs passes over
  the whole labelled training split, at any label fraction (rounded up to whole epochs of the subset).
- selection=best_val: the best val/acc on the full validation split (every validation label);
  val_subset: the best val/acc on a stratified, seeded share of the validation split the size of
  data.label_fraction; last: the last epoch, chosen without labels.
"""

from __future__ import annotations

import logging
import math

import lightning as L
from omegaconf import DictConfig, open_dict

from sslpath.core.errors import UserError
from sslpath.results.record import BUDGETS, SELECTIONS

log = logging.getLogger(__name__)


def check(cfg: DictConfig) -> None:
    """budget and selection name one of their options."""
    for key, options in (("budget", BUDGETS), ("selection", SELECTIONS)):
        value = cfg.get(key)
        if value not in options:
            raise UserError(
                f"{key}={value!r} is not one of {', '.join(options)} (conf/train.yaml describes them; "
                "experiment=label_efficiency uses budget=steps selection=last)."
            )


def apply_selection(cfg: DictConfig) -> None:
    """selection=last: the checkpoint callback keeps the newest epoch, monitoring nothing (as a chain's SSL
    stage does). Applied to cfg before the run dir's config.yaml is written, so the record says so."""
    if cfg.selection == "last" and cfg.get("callbacks", {}).get("model_checkpoint") is not None:
        with open_dict(cfg):
            cfg.callbacks.model_checkpoint.monitor = None
            cfg.callbacks.model_checkpoint.filename = "epoch{epoch:03d}"


def val_label_fraction(cfg: DictConfig) -> float:
    """The share of the validation split the run validates (and so selects its checkpoint) on."""
    return float(cfg.data.label_fraction) if cfg.selection == "val_subset" else 1.0


def optimiser_steps_per_epoch(trainer: L.Trainer, batches: int) -> int:
    """Optimiser steps an epoch of `batches` training batches takes under this trainer's batch limit and
    gradient accumulation (as Lightning counts them)."""
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif limit is not None:
        batches = int(batches * float(limit))
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))


class StepBudget(L.Callback):
    """budget=steps: sets the fit's epochs so a label subset gets as many optimiser steps as
    trainer.max_epochs epochs of the whole labelled training split. It acts in `setup`, after the data
    module has chosen the subset and before the optimiser and schedules read the epoch count, so the
    learning-rate and momentum schedules span the longer run."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        epochs = trainer.max_epochs
        full = optimiser_steps_per_epoch(trainer, datamodule.training_batches(datamodule.labelled_train_size))
        per_epoch = optimiser_steps_per_epoch(trainer, len(datamodule.train_dataloader()))
        budget = full * epochs
        trainer.fit_loop.max_epochs = math.ceil(budget / per_epoch)
        if trainer.fit_loop.max_epochs != epochs:
            log.info(
                "budget=steps: %d optimiser steps (%d epochs of the full labelled split) -> %d epochs of %d steps "
                "on the %g label share",
                budget,
                epochs,
                trainer.fit_loop.max_epochs,
                per_epoch,
                datamodule.label_fraction,
            )
