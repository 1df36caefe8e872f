"""How checkpoints are written: whole or not at all. Kept apart from `sslpath.models.checkpoint` (reading)
so that predict never imports Lightning."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sslpath.core.errors import UserError
from sslpath.core.files import atomic_output


class _WriteErrors:
    """A binary file that keeps the OSError its first failed write raised: torch.save reports a failed write
    (a full disk) as a RuntimeError of its zip writer ("unexpected pos …"), without the cause."""

    def __init__(self, file: Any) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file and renamed: a kill or a full disk mid-write leaves the
    previous checkpoint intact, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        try:
            with atomic_output(path) as f:
                writer = _WriteErrors(f)
                try:
                    torch.save(checkpoint, writer)
                except RuntimeError:
                    if writer.error is None:
                        raise
                    raise writer.error from None
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(
                    f"no space left on the device while saving {path}; nothing was overwritten and earlier "
                    "checkpoints are intact. Free disk space (or point paths.log_dir elsewhere) and resume "
                    "with ckpt_path=last."
                ) from None
            raise UserError(
                f"could not write checkpoint {path} ({err.strerror or err}); check that the output dir is writable."
            ) from None


TRAINING_STATE = ("optimizer_states", "lr_schedulers", "callbacks", "loops", "MixedPrecision", "hparams_name")


def slim_checkpoint(path: str | Path) -> None:
    """Rewrite a checkpoint without optimiser, scheduler, loop and callback state (atomically)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in TRAINING_STATE:
        ckpt.pop(key, None)
    with atomic_output(path) as f:
        torch.save(ckpt, f)
