"""Hydra callbacks: checks before any job starts, and reports after a sweep ends."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckOutputDir(Callback):
    """Fails in a clear paragraph, before any training, when the run or sweep dir is not writable."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)

    @staticmethod
    def _check(path: str) -> None:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            print(
                f"sslpath.train: error: cannot write the output dir {path} ({err.strerror or err}). Point "
                "paths.log_dir (or the SSLPATH_LOG_DIR environment variable) at a writable folder.",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
