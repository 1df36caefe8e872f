"""Console hygiene: known third-party noise is filtered, real warnings still show."""

from __future__ import annotations

import logging
import warnings

# (logger name, message prefix) of INFO lines that advertise or chatter rather than inform.
NOISY_LOG_LINES = (("lightning.pytorch.utilities.rank_zero", "💡 Tip"),)
# Deprecations inside libraries we call, not in anything a user wrote.
NOISY_WARNINGS = (r".*isinstance\(treespec, LeafSpec\).*",)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_third_party() -> None:
    """Call once logging is configured (Hydra's console and train.log handlers)."""
    if logging.getLogger().hasHandlers():
        # Lightning adds its own console handler and still propagates: every line would print twice.
        lightning = logging.getLogger("lightning")
        lightning.handlers = [h for h in lightning.handlers if type(h) is not logging.StreamHandler]
    for name, prefix in NOISY_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # Per-file or per-table chatter: "Directory watcher advancing…", MLflow's database set-up.
    for name in ("tensorboard", "mlflow.store", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
