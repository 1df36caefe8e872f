"""Test a trained checkpoint on a data set, as the training run's test stage did (`python -m sslpath.evaluate`).

The model is rebuilt only from the checkpoint's validated metadata and weights; the data comes
from training's own data configs, resized to the checkpoint's image size and normalised with its
mean and std; a tile folder is split as the checkpoint recorded (seed, fractions), and the split
evaluated must hold the very files it recorded. `out` gets what a training run dir holds after testing
(metrics.json, test_predictions.csv, test_examples.npz, written by the same code), so a report reads it
like a run, and the run's best checkpoint on the same data gives the run's test accuracy. With
`corruptions=pathology` it also tests the split under MedMNIST-C-style corruptions at five severities
(sslpath.data.corruptions) and writes robustness.{json,csv,md,png} beside metrics.json and into report/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from sslpath.checks.validate import check_paths, check_settings
from sslpath.core.devices import resolve_device
from sslpath.core.errors import UserError
from sslpath.core.names import path_name
from sslpath.core.paths import check_out_path, check_writable
from sslpath.data.corruptions import Suite, load_suite
from sslpath.data.datamodule import ArrayDataModule, FolderDataModule
from sslpath.data.splits import SPLITS, Split
from sslpath.data.stain_norm import use_checkpoint_settings
from sslpath.evaluation.benchmark import benchmark
from sslpath.evaluation.tta import DihedralTTA
from sslpath.models.checkpoint import Metadata, load_inference_model
from sslpath.reporting.robustness import copy_robustness, write_robustness
from sslpath.reporting.write import write_report
from sslpath.results.artifacts import class_logits, write_examples, write_test_predictions
from sslpath.results.calibration import temperature_report
from sslpath.results.metrics import bootstrap_settings, classification_results, evidence_results
from sslpath.results.record import METRICS_FILE, RunRecord, read_record, write_record
from sslpath.results.robustness import JSON, STEM

PROG = "sslpath.evaluate"
HELP = "python -m sslpath.evaluate --help"  # the one usage text: conf/evaluate.yaml's help
Predict = Callable[[torch.Tensor], torch.Tensor]  # uint8 N×3×H×W batch -> CPU logits
log = logging.getLogger(__name__)


def check_evaluate_settings(cfg: DictConfig) -> tuple[Path, Path]:
    """The checkpoint and the output folder, after every setting is checked and before any work."""
    if cfg.get("ckpt") in (None, ""):  # `???`, null or empty
        raise UserError(
            f"missing ckpt=PATH: the checkpoint to evaluate (a run dir's checkpoints/best-*.ckpt). All settings: {HELP}."
        )
    if cfg.get("split") not in SPLITS:
        raise UserError(f"split={cfg.get('split')} is not one of {', '.join(SPLITS)}.")
    for flag in ("report", "report_figures", "check_split", "calibrate", "tta"):
        if not isinstance(cfg.get(flag), bool):
            raise UserError(f"{flag}={cfg.get(flag)} is not true or false.")
    check_eval_settings(cfg)
    if type(cfg.data.get("eval_batch_size")) is not int or cfg.data.eval_batch_size < 1:
        raise UserError(f"data.eval_batch_size={cfg.data.get('eval_batch_size')} is not a positive integer; use e.g. 1024.")
    if cfg.get("run_name") is not None and not str(cfg.run_name).strip():
        raise UserError("run_name is empty; give the report's row a name, or leave it unset for the model kind.")
    ckpt = Path(str(cfg.ckpt)).expanduser()
    if cfg.out is None:
        name = path_name(ckpt.stem)  # a file name up to the file system's limit would overflow it with the time
        out = Path(cfg.paths.log_dir).expanduser() / "evaluations" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{name}"
    else:
        out = Path(str(cfg.out)).expanduser()
    check_out_path(out, "out")  # a symlink loop, or a file where a folder must be
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            f"out={out} already exists and is {'a file' if not out.is_dir() else 'not empty'}; evaluate never mixes its "
            "results with other files. Pass a new or empty folder, or leave out= unset for a fresh one under "
            "paths.log_dir/evaluations."
        )
    check_writable(out, "out")
    return ckpt, out


def check_eval_settings(cfg: DictConfig) -> None:
    """The `eval` settings (bootstrap, calibration bins) by training's rules; calibrate=true needs another
    split than the one it fits the temperature on."""
    check_paths(cfg, ("eval.",))
    if cfg.calibrate and cfg.split == "val":
        raise UserError(
            "calibrate=true fits the temperature on the val split, so it cannot also report calibration on it "
            "(the numbers would flatter the model). Evaluate split=test (the default), or leave calibrate=false."
        )


def temperature_scaling(
    cfg: DictConfig, ckpt: Path, device: torch.device, logits: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """calibrate=true: the temperature fitted on the val split's logits, and the split's NLL and ECE before and after."""
    _, val, predict = load_split(OmegaConf.merge(cfg, {"split": "val"}), ckpt, device)
    if len(val) == 0:
        raise UserError("calibrate=true needs validation tiles to fit the temperature on, but this data's val split is empty.")
    val_logits = predict_split(predict, val.images, cfg.data.eval_batch_size)
    return temperature_report(val_logits, val.labels, logits, labels, cfg.eval.ece_bins)


def checkpoint_datamodule(cfg: DictConfig, meta: Metadata, ckpt: Path) -> ArrayDataModule:
    """`cfg.data` at the checkpoint's image size and normalisation, without augmentation, its classes
    checked against the checkpoint's before any data is read."""
    size = meta.image_size if cfg.data.size is None else cfg.data.size
    if size != meta.image_size:
        raise UserError(
            f"data.size={size}, but {ckpt} was trained on {meta.image_size} px tiles. Leave data.size unset: "
            f"evaluate resizes the data to {meta.image_size} px as training did."
        )
    with open_dict(cfg.data):
        cfg.data.size, cfg.data.mean, cfg.data.std = meta.image_size, list(meta.mean), list(meta.std)
        use_checkpoint_settings(cfg.data, meta.stain_norm, ckpt)
    check_settings(cfg, "data")  # training's schema for the data settings, before any file is read
    if meta.split is not None and meta.split["seed"] is not None and is_folder(cfg.data):
        use_recorded_split(cfg, meta, ckpt)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.use_stain_record(meta.stain_norm)
    check_classes(datamodule, meta, ckpt)
    return datamodule


def is_folder(data: DictConfig) -> bool:
    return issubclass(get_class(data._target_), FolderDataModule)


def use_recorded_split(cfg: DictConfig, meta: Metadata, ckpt: Path) -> None:
    """Split a tile folder with the seed and fractions the checkpoint was trained with, whatever seed= says."""
    recorded = {key: meta.split[key] for key in ("seed", "val_fraction", "test_fraction")}
    given = {key: cfg.data.get(key) for key in recorded}
    if given != recorded:
        log.info(
            "data=folder: splitting with the settings %s recorded (%s), not %s, so its test tiles stay test tiles",
            ckpt.name,
            ", ".join(f"data.{k}={v}" for k, v in recorded.items()),
            ", ".join(f"{k}={v}" for k, v in given.items()),
        )
    with open_dict(cfg.data):
        for key, value in recorded.items():
            cfg.data[key] = value


def check_split(cfg: DictConfig, datamodule: ArrayDataModule, meta: Metadata, ckpt: Path) -> None:
    """The evaluated split of a tile folder holds exactly the files the checkpoint recorded for it."""
    if meta.split is None or not cfg.check_split or datamodule.split_record() is None:
        return
    if datamodule.split_record()[cfg.split] != meta.split[cfg.split]:
        raise UserError(
            f"the {cfg.split} split of data.dir={datamodule.tiles.root} is not the one {ckpt} recorded: its files (names "
            f"or bytes) differ. The folder changed since training, and a re-split of a changed folder can put training "
            f"tiles into {cfg.split}; or it is another folder. Evaluate on the folder as it was when training ran, or, "
            "for another data set, set check_split=false (then make sure none of its tiles was a training tile)."
        )


def check_classes(datamodule: ArrayDataModule, meta: Metadata, ckpt: Path) -> None:
    """Same class count; same names too, unless the data names none of its own (a custom npz's
    placeholders `class i`), when the checkpoint's names are used."""
    names = datamodule.class_names
    placeholders = ArrayDataModule.class_names.fget(datamodule)
    if datamodule.num_classes != meta.num_classes or names not in (placeholders, meta.class_names):
        raise UserError(
            f"{ckpt} classifies {meta.num_classes} classes ({', '.join(meta.class_names)}), but the data has "
            f"{datamodule.num_classes} ({', '.join(names)}). Evaluate it on data with the classes it was trained "
            "on (the data= option and data.path of its training run; a custom npz may set data.num_classes)."
        )


def load_split(cfg: DictConfig, ckpt: Path, device: torch.device) -> tuple[Metadata, Split, Predict]:
    """The checkpoint's metadata, `cfg.split` of `cfg.data` prepared as training did, and the model as a
    function from a uint8 batch to CPU logits: one path for clean and corrupted images alike."""
    model, meta = load_inference_model(ckpt, "ckpt")
    model.to(device)
    datamodule = checkpoint_datamodule(cfg, meta, ckpt)
    datamodule.setup("test")
    check_split(cfg, datamodule, meta, ckpt)
    split = datamodule.splits[cfg.split]
    if len(split.images) != len(split):  # data=stream: the training tiles stay in their shards
        raise UserError(
            f"the {cfg.split} split of data.dir is streamed from shards, not held in memory; evaluate split=val or split=test."
        )
    if len(split) == 0:
        raise UserError(f"the {cfg.split} split of this data is empty; choose another split= or data.")
    predict = partial(class_logits, model, datamodule.transform, device=device)
    return meta, split, DihedralTTA(predict) if cfg.get("tta") else predict  # the sweep benchmark sets none


def predict_split(predict: Predict, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of a whole split, batch by batch."""
    return torch.cat([predict(batch) for batch in images.split(batch_size)])


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Check, rebuild the model, run it over the split, write the run-dir files; returns the run record as
    metrics.json holds it."""
    start = time.perf_counter()
    ckpt, out = check_evaluate_settings(cfg)
    suite = load_suite(cfg.get("corruptions"))
    device = resolve_device(str(cfg.device))
    meta, split, predict = load_split(cfg, ckpt, device)
    logits = predict_split(predict, split.images, cfg.data.eval_batch_size)
    if not bool(logits.isfinite().all()):
        raise UserError(
            f"the model of {ckpt} gave NaN or infinite outputs on the {cfg.split} split; nothing was written. The "
            "checkpoint is damaged or its training diverged: use another checkpoint of the run."
        )
    probs = logits.softmax(dim=1).numpy()
    run_name = str(cfg.run_name or meta.kind)
    # The checkpoint's own training settings (label fraction, seed, SSL method), not this command's config:
    # a report groups the evaluation with the run that trained it.
    record = RunRecord(
        model=meta.kind,
        run_name=run_name,
        seed=meta.seed,
        label_fraction=meta.label_fraction,
        pretrain_method=meta.pretrain_method,
        **classification_results(logits, split.labels, meta.class_names),
        **evidence_results(logits, split.labels, bootstrap_settings(cfg.eval), cfg.eval.ece_bins),
        ckpt_path=str(ckpt.resolve()),
        evaluated_split=cfg.split,
        num_images=len(split),
        data=OmegaConf.to_container(cfg.data, resolve=True),
        epochs=0,  # an evaluation trains nothing
        wall_seconds=0.0,
        tta=cfg.tta,
        # the plain prediction beside the test-time-augmented one (sslpath.evaluation.tta)
        tta_plain=plain_results(predict.plain, split, meta.class_names, cfg.data.eval_batch_size) if cfg.tta else None,
    )
    if cfg.calibrate:
        record = dataclasses.replace(record, temperature_scaling=temperature_scaling(cfg, ckpt, device, logits, split.labels))
    check_finite(record.to_dict(), ckpt)
    robustness = None
    if suite is not None:
        robustness = benchmark(
            suite,
            split.images,
            split.labels,
            meta.class_names,
            predict,
            logits,
            cfg.data.eval_batch_size,
            device,
            bootstrap_settings(cfg.eval),
        )
        record = dataclasses.replace(record, robustness=robustness.summary())
    record = dataclasses.replace(record, wall_seconds=round(time.perf_counter() - start, 2))
    check_finite(record.to_dict(), ckpt)  # every number is computed before any file is written
    write_test_predictions(out, probs, split.labels.numpy(), meta.class_names)
    write_examples(out, split, probs, seed=cfg.seed)
    if robustness is not None:
        write_robustness(out, robustness, run_name, meta.kind, record.ckpt_path)
    write_record(out, record)  # last: a folder with metrics.json is complete
    if cfg.report:
        write_report([out], out / "report", figures=cfg.report_figures)
        if robustness is not None:
            copy_robustness(out, out / "report")
    tta = f" with 8-fold dihedral TTA (plain test_acc={record.tta_plain['test_acc']:.4f})" if cfg.tta else ""
    print(
        f"{PROG}: test_acc={record.test_acc:.4f} test_auc={record.test_auc} on {len(split)} {cfg.split} "
        f"images{tta} ({meta.kind} model {ckpt.name}, {device}) -> {out}",
        flush=True,
    )
    if cfg.calibrate:
        scaled = record.temperature_scaling
        print(
            f"{PROG}: temperature {scaled['temperature']:.3f} (fitted on {scaled['val_tiles']} val tiles): {cfg.split} "
            f"ECE {scaled['ece_before']:.4f} -> {scaled['ece_after']:.4f}, "
            f"NLL {scaled['nll_before']:.4f} -> {scaled['nll_after']:.4f}",
            flush=True,
        )
    if robustness is not None:
        summary = record.robustness
        drop = "n/a" if summary["relative_drop"] is None else f"{summary['relative_drop']:.1%}"
        print(
            f"{PROG}: mean corruption accuracy {summary['mean_corruption_acc']:.4f} over {len(suite.names)} corruptions x "
            f"{len(suite.severities)} severities (relative drop {drop}) -> {out / f'{STEM}.md'}",
            flush=True,
        )
    return record.to_dict()


def plain_results(predict: Predict, split: Split, class_names: list[str], batch_size: int) -> dict[str, Any]:
    """Loss, accuracy and AUC of the prediction without test-time augmentation."""
    plain = classification_results(predict_split(predict, split.images, batch_size), split.labels, class_names)
    return {key: plain[key] for key in ("test_loss", "test_acc", "test_auc")}


def check_finite(metrics: dict[str, Any], ckpt: Path) -> None:
    """metrics.json is strict JSON: a NaN or infinity in it is refused, never written."""
    try:
        json.dumps(metrics, allow_nan=False, default=str)
    except ValueError:
        raise UserError(
            f"evaluating {ckpt} gave NaN or infinite metrics, which would be silently wrong numbers; metrics.json "
            "was not written. The checkpoint is damaged or its training diverged: use another checkpoint of the run."
        ) from None


def benchmark_run(run_dir: Path, suite: Suite, device: str = "auto") -> Path | None:
    """Benchmark a finished training run's best checkpoint on its own test split; writes and returns
    <run_dir>/robustness/robustness.json (beside .csv/.md/.png); None for a run without a checkpoint."""
    record = read_record(run_dir / METRICS_FILE)
    if not record.ckpt_path:
        print(f"sslpath: {run_dir} tested no checkpoint (a fast_dev_run): left out of the robustness comparison", file=sys.stderr)
        return None
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg = OmegaConf.create({"data": run_cfg.data, "split": "test"})
    torch_device = resolve_device(device)
    meta, split, predict = load_split(cfg, Path(record.ckpt_path), torch_device)
    batch = cfg.data.eval_batch_size
    logits = predict_split(predict, split.images, batch)
    bootstrap = bootstrap_settings(run_cfg.eval)  # the run's own interval settings, as its metrics.json
    robustness = benchmark(suite, split.images, split.labels, meta.class_names, predict, logits, batch, torch_device, bootstrap)
    out = run_dir / STEM
    out.mkdir(exist_ok=True)
    write_robustness(out, robustness, record.run_name, meta.kind, record.ckpt_path)
    return out / JSON
