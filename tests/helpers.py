"""Callbacks the tests inject through config (`+callbacks.x._target_=helpers.…`)."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch

RECORDED: dict[str, dict[str, torch.Tensor]] = {}


class RecordBackbone(L.Callback):
    """Keeps a copy of the backbone weights at the first training step, keyed by model kind."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        RECORDED[pl_module.kind] = {k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()}


class SignalAt(L.Callback):
    """Sends `signum` to its own process after training batch `batch` of epoch `epoch`: a
    deterministic stand-in for pre-emption or a kill, with no sleeps or timing races."""

    def __init__(self, epoch: int, batch: int, signum: str = "SIGKILL") -> None:
        self.epoch, self.batch, self.signum = epoch, batch, getattr(signal, signum)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)
