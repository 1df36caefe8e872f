"""Train, test and record one run, or a chain: SSL pretraining, then fine-tuning (`python -m sslpath.train`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from sslpath.checks.validate import nan_advice, needs_pretraining, validate
from sslpath.core.errors import UserError
from sslpath.core.files import atomic_write_text
from sslpath.evaluation.features import FrozenEvalSettings, frozen_evaluation
from sslpath.models.checkpoint import Metadata, check_resumable
from sslpath.reporting.write import write_report
from sslpath.results.record import RunRecord, write_record
from sslpath.training import chain, protocol
from sslpath.training import rundir as runs
from sslpath.training.build import build_run, check_label_fraction, model_class
from sslpath.training.tracking import log_run_summary

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Validate, chain SSL pretraining when a fine-tune needs it, fit and test; returns the run record as
    metrics.json holds it."""
    validate(cfg)
    protocol.check(cfg)
    protocol.apply_selection(cfg)
    if model_class(cfg).ssl:
        chain.keep_last_epoch(cfg)
    if not needs_pretraining(cfg):
        with nan_advice(cfg):
            return fit_and_test(cfg)
    check_label_fraction(cfg)  # on the data, before the SSL stage trains
    with open_dict(cfg), nan_advice(cfg, "pretrain"):
        cfg.model.pretrained_ckpt = chain.pretrained_checkpoint(cfg, fit_and_test)
    with nan_advice(cfg):
        metrics = fit_and_test(cfg)
    if cfg.report and rank_zero_only.rank == 0:
        out = Path(cfg.paths.output_dir) / "report"
        write_report([chain.ssl_run_dir(metrics), Path(cfg.paths.output_dir)], out, figures=cfg.report_figures)
        log.info("report of the SSL stage and this fine-tune -> %s", out)
    return metrics


def fit_and_test(cfg: DictConfig) -> dict[str, Any]:
    """One run in its run dir: fit (or resume), test the best checkpoint, write its record (metrics.json);
    returns the record as metrics.json holds it."""
    out = Path(cfg.paths.output_dir)
    with runs.claim(out):
        resume_from = checkpoint_to_resume(cfg, out)
        if resume_from:
            expected = {"kind": model_class(cfg).kind, "backbone": cfg.model.backbone.name, "stem": cfg.model.backbone.stem}
            own = cfg.resume or cfg.ckpt_path == "last"  # a finished run of this dir may resume to be tested again
            check_resumable(
                resume_from, "resume" if cfg.resume else "ckpt_path", expected, None if own else cfg.trainer.max_epochs
            )
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        log.info("run dir: %s", out.resolve())
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        run = build_run(cfg)
        trainer = run.trainer
        start = time.perf_counter()
        trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=resume_from, weights_only=True)
        value = best_value(trainer, cfg.optimized_metric)  # before test(), which replaces callback_metrics
        knn = trainer.callback_metrics.get("val/knn_acc")
        best = best_checkpoint(trainer)
        trainer.test(run.model, datamodule=run.datamodule, ckpt_path=best, weights_only=True, verbose=False)
        frozen = frozen_features(cfg, run.model, run.datamodule) if trainer.is_global_zero else {}
        record = RunRecord(
            model=run.metadata.kind,
            run_name=str(cfg.run_name),
            seed=run.metadata.seed,
            label_fraction=run.metadata.label_fraction,
            train_labels_per_class=run.datamodule.train_labels_per_class,
            **run.results.results,
            best_val_acc=best_score(trainer),
            val_knn_acc=None if knn is None else float(knn),
            optimized_metric=cfg.optimized_metric,
            optimized_value=value,
            ckpt_path=str(Path(best).resolve()) if best else None,
            epochs=trainer.current_epoch,
            optimizer_steps=trainer.global_step,
            budget=cfg.budget,
            **selection_fields(cfg, trainer, run.datamodule),
            wall_seconds=round(time.perf_counter() - start, 2),
            **run.model.run_record(),
            **frozen,
            **finetune_fields(cfg, run.metadata),
        )
        if trainer.is_global_zero:
            log_run_summary(trainer.loggers, cfg, record)
            path = write_record(out, record)
            log.info("test_acc=%.4f test_auc=%s -> %s", record.test_acc, record.test_auc, path)
        return record.to_dict()


def selection_fields(cfg: DictConfig, trainer: Any, datamodule: Any) -> dict[str, Any]:
    """How the tested checkpoint was chosen, for metrics.json: a run whose checkpoint callback monitors nothing
    (selection=last, a chain's SSL stage) tested its last epoch, and no validation image chose it."""
    monitored = getattr(trainer.checkpoint_callback, "monitor", None) is not None
    return {
        "selection": cfg.selection if monitored else "last",
        "selection_val_images": len(datamodule.splits["val"]) if monitored else 0,
    }


def frozen_features(cfg: DictConfig, model: Any, datamodule: Any) -> dict[str, Any]:
    """An SSL run's frozen-feature evaluation of the tested checkpoint's exported backbone (nothing
    for supervised models, or with frozen_eval.enabled=false)."""
    settings = cfg.get("frozen_eval")
    if not model.ssl or settings is None or not settings.enabled:
        return {}
    return frozen_evaluation(model.backbone, datamodule, FrozenEvalSettings(**OmegaConf.to_container(settings, resolve=True)))


def finetune_fields(cfg: DictConfig, meta: Metadata) -> dict[str, Any]:
    """Where a fine-tune started from, for its record (nothing for other models)."""
    if "pretrained_ckpt" not in cfg.model:
        return {}
    ckpt = cfg.model.pretrained_ckpt
    return {
        "pretrained_ckpt": str(Path(ckpt).resolve()) if ckpt else None,
        "pretrain_method": meta.pretrain_method,
        "freeze_backbone": bool(cfg.model.freeze_backbone),
    }


def checkpoint_to_resume(cfg: DictConfig, out: Path) -> str | None:
    """The checkpoint to continue from: resume=RUN_DIR or ckpt_path=last (newest in the run dir,
    same settings required), or an explicit ckpt_path file."""
    if cfg.resume or cfg.ckpt_path == "last":
        runs.check_same_settings(cfg, out)
        return str(runs.resume_checkpoint(out))
    return cfg.ckpt_path


def best_checkpoint(trainer: Any) -> str | None:
    """The best checkpoint's path; None (test the weights in memory) only for a fast_dev_run."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        return best
    if trainer.fast_dev_run:
        log.info("fast_dev_run writes no checkpoint: testing the weights in memory")
        return None
    raise UserError(
        "training finished without a best checkpoint (no validation ran?). Keep the model_checkpoint "
        "callback and check_val_every_n_epoch <= trainer.max_epochs."
    )


def best_score(trainer: Any) -> float | None:
    """The monitored metric's best value; None when nothing is monitored (a chain's SSL stage)."""
    ckpt = trainer.checkpoint_callback
    score = getattr(ckpt, "best_model_score", None) if getattr(ckpt, "monitor", None) else None
    return None if score is None else float(score)


def best_value(trainer: Any, metric: str) -> float | None:
    """The best value of metric if the checkpoint callback monitors it, else its last value."""
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "monitor", None) == metric and ckpt.best_model_score is not None:
        return float(ckpt.best_model_score)
    value = trainer.callback_metrics.get(metric)
    if value is None and not trainer.fast_dev_run:
        raise UserError(
            f"optimized_metric={metric} was never logged during training (val/knn_acc needs "
            "model.knn_k > 0, and validation must run)."
        )
    return None if value is None else float(value)
