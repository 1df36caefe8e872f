"""OmegaConf resolvers and small config helpers shared by the entrypoints."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf


def auto_precision() -> str:
    """bf16 autocast where it is fast and safe (CUDA with bf16), full precision elsewhere."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("sslpath.auto_precision"):
        OmegaConf.register_new_resolver("sslpath.auto_precision", auto_precision)
