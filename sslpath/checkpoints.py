"""Safe checkpoint reading: tensors and plain data only, never code from a pickle."""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from sslpath.errors import UserError

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
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}).") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict); pass a .ckpt written by sslpath.train.")
    return ckpt
