"""The one reading of a `device=` setting, shared by the inference commands (evaluate, predict)."""

from __future__ import annotations

import torch

from sslpath.core.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` (the GPU when one is visible, else the CPU), `cpu`, `cuda` or `cuda:N`, checked to exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except (RuntimeError, TypeError):
        raise UserError(f"device={name} is not a torch device; use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device={name} is not supported; use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device={name} but no CUDA GPU is visible; use device=cpu or device=auto.")
        if device.index is not None and device.index >= count:
            raise UserError(f"device={name} but only {count} CUDA GPU(s) are visible (cuda:0 to cuda:{count - 1}).")
    return device
