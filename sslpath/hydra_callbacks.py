"""Hydra callbacks: checks before any job starts, and reports after a sweep ends."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckOutputDir(Callback):
    """Fails in a clear paragraph, before any training, when the run or sweep dir is not writable."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        resume = config.get("resume")
        if resume is not None and not (Path(str(resume)) / "config.yaml").is_file():
            print(
                f"sslpath.train: error: resume={resume} is not a run dir of sslpath.train (no config.yaml there); "
                "nothing was created. Pass the dir of the interrupted run (outputs/runs/<time>_<name>).",
                file=sys.stderr,
            )
            raise SystemExit(2)
        HydraConfig.instance().set_config(config)  # run dirs interpolate ${hydra:…}; Hydra sets it later
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
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


class SweepReport(Callback):
    """After a multirun: one comparison report over every job, plus the SSL stages fine-tunes used,
    and sweep_results.md/.csv: mean ± std over seeds per (model, label fraction), with a label
    efficiency figure when the sweep has several label fractions."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sslpath.errors import exit_on_user_error
        from sslpath.files import read_json
        from sslpath.report import REPORT_DIR, load_run, write_report, write_sweep_results
        from sslpath.chain import ssl_run_dir

        if not config.get("report", True):
            return
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted((p.parent for p in sweep.glob("*/metrics.json")), key=job_order)
        if not jobs:
            print(f"sslpath: no finished job in {sweep}: no sweep report", file=sys.stderr)
            return
        ssl_stages = {ssl_run_dir(m) for m in map(read_json, (j / "metrics.json" for j in jobs)) if m.get("pretrained_ckpt")}
        with exit_on_user_error("sslpath.train"):
            results = write_report([*sorted(ssl_stages), *jobs], sweep / REPORT_DIR)
            sweep_results = write_sweep_results([load_run(j) for j in jobs], sweep, sweep / REPORT_DIR)
        print(f"sslpath: sweep report -> {results}")
        print(f"sslpath: sweep results -> {sweep_results}")


def job_order(job_dir: Path) -> tuple[int, str]:
    """Sweep job dirs (<job num>_<run name>) in launch order: 2_x before 10_x."""
    num, _, _ = job_dir.name.partition("_")
    return (int(num) if num.isdigit() else sys.maxsize, job_dir.name)
