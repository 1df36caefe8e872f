"""Hydra callbacks: checks before any job starts, and reports after a sweep ends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CheckOutputDir(Callback):
    """Checks the run or sweep dir before Hydra writes into it: writable, not in use, not holding
    an earlier run (unless resuming it), and for resume= an existing run. Fails in one paragraph."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lightning.pytorch.utilities import rank_zero_only

        from sslpath.core.errors import UserError, exit_on_user_error
        from sslpath.training.rundir import check_can_start, check_writable

        if rank_zero_only.rank != 0:
            return  # a DDP rank that Lightning (or SLURM) started: rank 0 checked and holds the run dir
        with exit_on_user_error("sslpath.train"):
            resume = config.get("resume")
            if resume is not None and not (Path(str(resume)) / "config.yaml").is_file():
                raise UserError(
                    f"resume={resume} is not a run dir of sslpath.train (no config.yaml there); nothing was created. "
                    "Pass the dir of the interrupted run (outputs/runs/<time>_<name>)."
                )
            HydraConfig.instance().set_config(config)  # run dirs interpolate ${hydra:…}; Hydra sets it later
            run_dir = Path(config.hydra.run.dir)
            check_writable(run_dir, "output dir")
            check_can_start(run_dir, resuming=resume is not None or config.get("ckpt_path") == "last")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from sslpath.checks.validate import check_settings
        from sslpath.core.errors import exit_on_user_error
        from sslpath.training.rundir import check_new_sweep, check_writable

        with exit_on_user_error("sslpath.train"):
            check_settings(config, "hydra.sweeper")  # e.g. hydra.sweeper.n_trials=0, before any trial
            HydraConfig.instance().set_config(config)
            sweep = Path(config.hydra.sweep.dir)
            check_new_sweep(sweep)
            check_writable(sweep, "output dir")


class SweepReport(Callback):
    """After a multirun: one comparison report over every job, plus the SSL stages fine-tunes used,
    and sweep_results.md/.csv: mean ± std over seeds per (model, label fraction), with a label
    efficiency figure when the sweep has several label fractions."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sslpath.core.errors import exit_on_user_error
        from sslpath.report import REPORT_DIR, load_run, write_report, write_sweep_results

        if not config.get("report", True):
            return
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted((p.parent for p in sweep.glob("*/metrics.json")), key=job_order)
        if not jobs:
            print(f"sslpath: no finished job in {sweep}: no sweep report", file=sys.stderr)
            return
        with exit_on_user_error("sslpath.train"):
            runs = [load_run(j) for j in jobs]  # every job checked before any is read further
            stages = ssl_stages(run.metrics for run in runs)
            # TensorBoard images only in runs of this sweep: a stage given as model.pretrained_ckpt may be anyone's.
            results = write_report([*stages, *jobs], sweep / REPORT_DIR, tensorboard_within=sweep)
            sweep_results = write_sweep_results(runs, sweep, sweep / REPORT_DIR)
        print(f"sslpath: sweep report -> {results}")
        print(f"sslpath: sweep results -> {sweep_results}")


def ssl_stages(metrics: Any) -> list[Path]:
    """The SSL run dirs the jobs' fine-tunes started from (<run dir>/checkpoints/<file>.ckpt): each only when
    it is itself a finished run (metrics.json in it), never the folders around a checkpoint passed by hand."""
    stages: set[Path] = set()
    for m in metrics:
        ckpt = m.get("pretrained_ckpt")
        if not isinstance(ckpt, str) or not ckpt:
            continue
        parents = Path(ckpt).parents
        if len(parents) > 1 and (parents[1] / "metrics.json").is_file():
            stages.add(parents[1])
    return sorted(stages)


def job_order(job_dir: Path) -> tuple[int, str]:
    """Sweep job dirs (<job num>_<run name>) in launch order: 2_x before 10_x."""
    num, _, _ = job_dir.name.partition("_")
    return (int(num) if num.isdigit() else sys.maxsize, job_dir.name)
