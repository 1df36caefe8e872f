"""Callbacks the tests inject through config (`+callbacks.x._target_=helpers.…`)."""

from __future__ import annotations

import lightning as L
import torch

RECORDED: dict[str, dict[str, torch.Tensor]] = {}


class RecordBackbone(L.Callback):
    """Keeps a copy of the backbone weights at the first training step, keyed by model kind."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        RECORDED[pl_module.kind] = {k: v.detach().clone() for k, v in pl_module.backbone.state_dict().items()}


class SlowSteps(L.Callback):
    """Stretches each training step so a test can signal a run mid-epoch."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        import time

        time.sleep(self.seconds)
