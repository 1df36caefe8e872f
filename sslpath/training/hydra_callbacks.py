"""Hydra callbacks: checks before any job starts, and reports after a sweep ends (the comparison report of
every job, and with experiment=robustness each job's best checkpoint under corruptions)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from sslpath.checks.validate import check_settings
from sslpath.core.errors import UserError, exit_on_user_error
from sslpath.core.names import check_path_name
from sslpath.core.paths import make_writable_dir
from sslpath.data.corruptions import load_suite
from sslpath.evaluation.evaluate import benchmark_run
from sslpath.reporting.robustness import write_comparison
from sslpath.reporting.runs import load_run
from sslpath.reporting.write import REPORT_DIR, write_report, write_sweep_results
from sslpath.results.record import RunRecord
from sslpath.results.robustness import STEM
from sslpath.training.rundir import check_can_start, check_new_sweep, note_if_new


class CheckOutputDir(Callback):
    """Checks the run or sweep dir before Hydra writes into it: writable, not in use, not holding
    an earlier run (unless resuming it), and for resume= an existing run. Fails in one paragraph.
    Notes whether this process creates the run dir: only then may a failed start remove it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if rank_zero_only.rank != 0:
            return  # a DDP rank that Lightning (or SLURM) started: rank 0 checked and holds the run dir
        with exit_on_user_error("sslpath.train"):
            HydraConfig.instance().set_config(config)  # run dirs interpolate ${hydra:…}; Hydra sets it later
            check_path_name(str(config.run_name), "run_name")  # before the run dir, which it names, is resolved
            resume = config.get("resume")
            if resume is not None and not (Path(str(resume)) / "config.yaml").is_file():
                raise UserError(
                    f"resume={resume} is not a run dir of sslpath.train (no config.yaml there); nothing was created. "
                    "Pass the dir of the interrupted run (outputs/runs/<time>_<name>)."
                )
            run_dir = Path(config.hydra.run.dir)
            note_if_new(run_dir)
            make_writable_dir(run_dir, "output dir")
            check_can_start(run_dir, resuming=resume is not None or config.get("ckpt_path") == "last")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_user_error("sslpath.train"):
            check_settings(config, "hydra.sweeper")  # e.g. hydra.sweeper.n_trials=0, before any trial
            HydraConfig.instance().set_config(config)
            for run_name in [str(config.run_name), *swept_values(config, "run_name")]:
                check_path_name(run_name, "run_name")  # each job's dir is named by it
            sweep = Path(config.hydra.sweep.dir)
            check_new_sweep(sweep)
            make_writable_dir(sweep, "output dir")


def swept_values(config: DictConfig, key: str) -> list[str]:
    """The literal values a multirun's command line gives `key` (`key=a,b` or `key=choice(a,b)`);
    interpolations and non-choice sweeps are left to the job, whose dir resolution checks them."""
    values: list[str] = []
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        if override.get_key_element() != key:
            continue
        try:
            found = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(override.value())]
        except Exception:  # an interval or range sweep, or a value Hydra will refuse itself
            continue
        values += [v for v in found if "${" not in v]
    return values


class SweepReport(Callback):
    """After a multirun: one comparison report over every job, plus the SSL stages fine-tunes used,
    and sweep_results.md/.csv: mean ± std over seeds per (model, label fraction), with a label
    efficiency figure when the sweep has several label fractions."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("report", True):
            return
        sweep = Path(config.hydra.sweep.dir)
        jobs = sorted((p.parent for p in sweep.glob("*/metrics.json")), key=job_order)
        if not jobs:
            print(f"sslpath: no finished job in {sweep}: no sweep report", file=sys.stderr)
            return
        with exit_on_user_error("sslpath.train"):
            runs = [load_run(j) for j in jobs]  # every job checked before any is read further
            keys = [(r.record.run_name, r.record.label_fraction, r.record.seed) for r in runs]
            if len(set(keys)) < len(keys):
                # jobs of other settings (a sweep over optimizer.lr, say) under one run_name and seed are not
                # seeds of one model: pooling them would inflate n. Each job keeps its own results.
                print(
                    f"sslpath: jobs in {sweep} share a run_name, label fraction and seed (a sweep over other settings): "
                    "no pooled report. Give each setting its own run_name to compare them with sslpath.report.",
                    file=sys.stderr,
                )
                return
            stages = ssl_stages(run.record for run in runs)
            # TensorBoard images only in runs of this sweep: a stage given as model.pretrained_ckpt may be anyone's.
            figures = config.get("report_figures", True)
            results = write_report([*stages, *jobs], sweep / REPORT_DIR, tensorboard_within=sweep, figures=figures)
            sweep_results = write_sweep_results(runs, sweep, sweep / REPORT_DIR, figures=figures)
        print(f"sslpath: sweep report -> {results}")
        print(f"sslpath: sweep results -> {sweep_results}")


class SweepRobustness(Callback):
    """After a multirun: each job's best checkpoint under the `robustness` corruptions (a `corruptions`
    config, e.g. `- /corruptions@robustness: pathology`), then one comparison in <sweep>/robustness/."""

    def __init__(self, device: str = "auto", key: str = "robustness") -> None:
        self.device, self.key = device, key

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        with exit_on_user_error("sslpath.train"):
            suite = load_suite(config.get(self.key), self.key)
            if suite is None:
                raise UserError(f"{self.key} lists no corruption: set it to a corruptions config (experiment=robustness does).")
            jobs = sorted((p.parent for p in sweep.glob("*/metrics.json")), key=job_order)
            if not jobs:
                print(f"sslpath: no finished job in {sweep}: no robustness comparison", file=sys.stderr)
                return
            records = [r for r in (benchmark_run(job, suite, self.device) for job in jobs) if r is not None]
            if not records:
                return
            out = sweep / STEM
            out.mkdir(exist_ok=True)
            result = write_comparison(records, out)
        print(f"sslpath: robustness comparison -> {result}")


def ssl_stages(records: Iterable[RunRecord]) -> list[Path]:
    """The SSL run dirs the jobs' fine-tunes started from (<run dir>/checkpoints/<file>.ckpt): each only when
    it is itself a finished run (metrics.json in it), never the folders around a checkpoint passed by hand."""
    stages: set[Path] = set()
    for record in records:
        ckpt = record.pretrained_ckpt
        if not ckpt:
            continue
        parents = Path(ckpt).parents
        if len(parents) > 1 and (parents[1] / "metrics.json").is_file():
            stages.add(parents[1])
    return sorted(stages)


def job_order(job_dir: Path) -> tuple[int, str]:
    """Sweep job dirs (<job num>_<run name>) in launch order: 2_x before 10_x."""
    num, _, _ = job_dir.name.partition("_")
    return (int(num) if num.isdigit() else sys.maxsize, job_dir.name)
