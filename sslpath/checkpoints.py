"""Safe checkpoint reading: tensors and plain data only, never code from a pickle."""

from __future__ import annotations

import collections
import errno
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sslpath.errors import UserError
from sslpath.files import atomic_output

# Lightning checkpoints hold MultiStepLR's `milestones`, a Counter: plain data, safe to allow.
torch.serialization.add_safe_globals([collections.Counter])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a checkpoint that needs arbitrary unpickling is refused."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}. Check the path (run dirs keep them in checkpoints/).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"refused to load {path}: it needs code to unpickle, which a weights-only load does not run "
            f"({reason}). Only load checkpoints written by sslpath or from a source you trust."
        ) from None
    except Exception as err:  # torch raises RuntimeError, KeyError, EOFError… for non-checkpoints
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}).") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by sslpath.train.")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file and renamed: a kill or a full disk mid-write leaves the
    previous checkpoint intact, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        try:
            with atomic_output(path) as f:
                torch.save(checkpoint, f)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(
                    f"no space left on the device while saving {path}; nothing was overwritten and earlier "
                    "checkpoints are intact. Free disk space (or point paths.log_dir elsewhere) and resume "
                    "with ckpt_path=last."
                ) from None
            raise UserError(f"could not write checkpoint {path} ({err.strerror or err}); check that the output dir is writable.") from None
