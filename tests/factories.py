"""Shared test factories: tiny runs, files and configs that several test modules build."""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import importlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobRuntime
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

import sslpath.conf
from sslpath.data.datamodule import FolderDataModule
from sslpath.data.splits import SPLITS
from sslpath.data.stain import density_to_rgb
from sslpath.data.synthetic import synthetic_splits
from sslpath.models.ssl import SSLMethod
from sslpath.results.metrics import classification_results
from sslpath.results.record import RunRecord, write_record
from sslpath.training.build import build_model
from sslpath.training.fit import train

# Small enough for 2 CPU cores: 16 px synthetic tiles, a handful of batches, one epoch, and a
# few-thousand-parameter CNN. Real-size ResNet-18 runs live in the `slow` tier.
TINY_DATA = [
    "data=synthetic",
    "data.size=16",
    "data.train_count=72",
    "data.val_count=36",
    "data.test_count=36",
    "data.batch_size=24",
]
TINY_TRAINER = [
    "model.backbone.name=tiny",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "+trainer.enable_model_summary=false",
    "callbacks.progress_bar.refresh_rate=0",
]
TINY = TINY_DATA + TINY_TRAINER

SAMPLE = os.environ.get("SSLPATH_SAMPLE_NPZ")


CONF = Path(sslpath.conf.__file__).parent
HYDRA_LOAD = ConfigLoaderImpl.load_configuration  # Hydra's own, for real_composition()
_GROUP_CHOICES: dict[tuple, DictConfig] = {}


def _is_group(key: str) -> bool:
    return key.startswith("hydra/") or (CONF / key).is_dir()


def cached_load_configuration(
    self: ConfigLoaderImpl,
    config_name: str | None,
    overrides: list[str],
    run_mode: RunMode,
    from_shell: bool = True,
    validate_sweep_overrides: bool = True,
) -> DictConfig:
    """Hydra's ConfigLoaderImpl.load_configuration, in a fraction of the time: a composition costs ~0.3 s
    and the tests ask for a thousand (two per in-process command), most differing only in values (`seed=3`).
    Hydra composes the config groups' choices, then applies every other override (`key=value`, `+key=value`,
    `~key`), in order, to the merged config (_apply_overrides_to_config) and fills in the hydra node's
    per-call fields (the override lists, cwd, override_dirname). So does this, with Hydra's same function and
    in its same order, on a copy of a cached composition of the group choices. Sweeps and hydra.searchpath
    go to Hydra whole; tests/test_factories.py checks the result against Hydra's own."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # Hydra's own error, as Hydra raises it
        return HYDRA_LOAD(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
    if any(o.is_sweep_override() or o.key_or_group.startswith("hydra.searchpath") for o in parsed):
        return HYDRA_LOAD(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
    # Hydra's test (defaults_list.Overrides): a dict value, or a key that is no config group
    values = [o for o in parsed if o.package is None and (isinstance(o.value(), dict) or not _is_group(o.key_or_group))]
    groups = [o.input_line for o in parsed if not any(o is v for v in values)]
    job_name = JobRuntime().get("name")  # the default hydra.job.name
    search_path = tuple((element.provider, element.path) for element in self.config_search_path.get_path())
    # One composition serves every run mode: without sweeps a multirun composition differs from a run's only
    # in skipping a missing group default, where the run's raises; then Hydra answers the call itself.
    key = (search_path, config_name, tuple(groups), from_shell, job_name)
    if key not in _GROUP_CHOICES:
        try:
            _GROUP_CHOICES[key] = HYDRA_LOAD(self, config_name, groups, RunMode.RUN, from_shell, validate_sweep_overrides)
        except Exception:  # Hydra's own error (or, for a multirun, its own composition)
            return HYDRA_LOAD(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
    cfg = copy.deepcopy(_GROUP_CHOICES[key])
    OmegaConf.clear_cache(cfg)  # as new as Hydra's: `${now:…}` (the run dir's time) is resolved anew
    try:
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    except OmegaConfBaseException as e:
        raise ConfigCompositionException().with_traceback(sys.exc_info()[2]) from e
    task = [o for o in parsed if not o.is_hydra_override()]
    cfg.hydra.overrides.hydra = [o.input_line for o in parsed if o.is_hydra_override()]
    cfg.hydra.overrides.task = [o.input_line for o in task]
    with open_dict(cfg.hydra):
        for name in cfg.hydra.job.env_copy:
            cfg.hydra.job.env_set[name] = os.environ[name]
    cfg.hydra.runtime.cwd = os.getcwd()
    dirname = cfg.hydra.job.config.override_dirname
    cfg.hydra.job.override_dirname = get_overrides_dirname(task, list(dirname.exclude_keys), dirname.item_sep, dirname.kv_sep)
    return cfg


def cache_compositions() -> None:
    """Every Hydra composition in this process (compose API and in-process commands) goes through
    cached_load_configuration (conftest calls it once)."""
    ConfigLoaderImpl.load_configuration = cached_load_configuration


@contextlib.contextmanager
def real_composition() -> Iterator[None]:
    """Hydra's own load_configuration, uncached (to check cached_load_configuration against it)."""
    ConfigLoaderImpl.load_configuration = HYDRA_LOAD
    try:
        yield
    finally:
        ConfigLoaderImpl.load_configuration = cached_load_configuration


@functools.cache
def _composed(config: str, overrides: tuple[str, ...]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        return compose(config, overrides=list(overrides), return_hydra_config=True)


def composed(config: str, overrides: tuple[str, ...], hydra: bool = False) -> DictConfig:
    """A copy of conf/<config>.yaml composed with these overrides (each list composed once per session)."""
    cfg = copy.deepcopy(_composed(config, overrides))
    OmegaConf.clear_cache(cfg)
    if not hydra:
        with open_dict(cfg):
            del cfg.hydra
    return cfg


def compose_cfg(out_dir: Path, overrides: list[str] = (), tiny: bool = True) -> DictConfig:
    """Compose conf/train.yaml as `python -m sslpath.train` would, with its run dir at out_dir."""
    cfg = composed("train", (*(TINY if tiny else []), *overrides), hydra=True)
    with open_dict(cfg):
        if not any(o.startswith("paths.log_dir=") for o in overrides):
            cfg.paths.log_dir = f"{out_dir}/logs"
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: unbuffered, with tests/helpers.py importable for `+callbacks`."""
    tests = str(Path(__file__).parent)
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
    }


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, module: str = "sslpath.train", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )


def run_main(module: str, *args: str) -> object:
    """`python -m module args` in this process: the command's main() with sys.argv set, as its console
    script runs it (a SystemExit propagates as the command raises it). Commands are found by name: no test
    imports an entry module as a library."""
    old_argv = sys.argv
    sys.argv = [module, *args]
    try:
        return importlib.import_module(module).main()
    finally:
        sys.argv = old_argv


def run_command(*args: str, cwd: Path, module: str = "sslpath.train") -> subprocess.CompletedProcess:
    """`python -m module args` run in this process from cwd, answered as run_cli answers: exit code, stdout
    and stderr. For tests that check files, messages and exit codes (no process boundary to test), it saves
    the ~5 s a fresh interpreter spends importing torch."""
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level, old_cwd = list(root.handlers), root.level, os.getcwd()
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_main(module, *args)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            except Exception:  # an uncaught error ends a real process with a traceback and status 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old_cwd)
        # Hydra points the root logger at the captured streams; later tests must not log to them.
        root.handlers[:], root.level = handlers, level
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def train_cli(tmp_path: Path, *overrides: str, data: list[str] = TINY_DATA, run_dir: str | None = "run") -> tuple[int, str]:
    """`python -m sslpath.train` of a tiny run in this process from tmp_path: (exit code, stderr). run_dir=None
    keeps the configured run dir (under paths.log_dir)."""
    run = [f"hydra.run.dir={tmp_path}/{run_dir}"] if run_dir else []
    result = run_command(*data, *TINY_TRAINER, f"paths.log_dir={tmp_path}/logs", *run, *overrides, cwd=tmp_path)
    return result.returncode, result.stderr


def datamodule(root: Path, cache: Path, **kwargs) -> FolderDataModule:
    settings = dict(
        dir=str(root), cache_dir=str(cache), size=16, val_fraction=0.2, test_fraction=0.2, batch_size=4, eval_batch_size=4
    )
    return FolderDataModule(**{**settings, **kwargs})


def tiny_run(out: Path, epochs: int = 3) -> dict:
    """A tiny baseline run that tells the synthetic classes apart, plus its data saved as a
    MedMNIST-format npz (the tests of predict, evaluate and checkpoints share it)."""
    cfg = compose_cfg(out, ["model=baseline", f"trainer.max_epochs={epochs}", "optimizer.lr=0.01"])
    counts = {split: cfg.data[f"{split}_count"] for split in ("train", "val", "test")}
    splits = synthetic_splits(cfg.data.size, cfg.data.num_classes, counts, cfg.seed)
    metrics = train(cfg)
    npz = out / "synthetic.npz"
    np.savez(
        npz,
        **{f"{k}_images": s.images.permute(0, 2, 3, 1).numpy() for k, s in splits.items()},
        **{f"{k}_labels": s.labels.numpy()[:, None] for k, s in splits.items()},
    )
    return {"dir": out, "ckpt": Path(metrics["ckpt_path"]), "npz": npz, "splits": splits, "metrics": metrics}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def compose_predict(*overrides: str) -> DictConfig:
    """conf/predict.yaml with these overrides, as `python -m sslpath.predict` composes it."""
    return composed("predict", overrides)


def closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit(model: L.LightningModule, steps: int = 3, batch: int = 8, **trainer_args) -> L.Trainer:
    gen = torch.Generator().manual_seed(11)
    n = steps * batch
    data = TensorDataset(torch.rand(n, 3, 16, 16, generator=gen), torch.rand(n, 3, 16, 16, generator=gen), torch.arange(n) % 9)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **trainer_args,
    )
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=batch))
    return trainer


# Narrow heads for the tiny backbone; the configs' defaults are the papers' widths (docs/methods.md).
SMALL_HEADS = {
    "byol": ["projector_hidden_dim=32", "projector_dim=16", "predictor_hidden_dim=32"],
    "mocov3": ["projector_hidden_dim=32", "projector_dim=16", "predictor_hidden_dim=32"],
    "barlowtwins": ["projector_hidden_dim=32", "projector_dim=16"],
    "vicreg": ["projector_hidden_dim=32", "projector_dim=16"],
    "dino": ["head_hidden_dim=32", "head_bottleneck_dim=8", "head_dim=16"],
}


def build(tmp_path: Path, method: str, *overrides: str) -> SSLMethod:
    """The model `model=<method>` instantiates (tiny backbone, narrow heads)."""
    cfg = compose_cfg(tmp_path, [f"model={method}", *(f"model.{o}" for o in SMALL_HEADS[method]), *overrides])
    return build_model(cfg, num_classes=9)


def edit_json(**changes: object) -> Callable[[Path], None]:
    """Change (or, with value ..., delete) metrics.json keys."""

    def edit(run: Path) -> None:
        metrics = json.loads((run / "metrics.json").read_text())
        metrics.update(changes)
        (run / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if v is not ...}))

    return edit


COLOURS = {"adipose": (220, 40, 40), "mucus": (40, 200, 40), "tumour": (40, 40, 220)}


FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".tif")


SIZES = ((20, 20), (40, 32))  # width × height, as PIL counts


def make_tiles(folder: Path, counts: dict[str, int], start: int = 0) -> None:
    """Solid-colour tiles per class (one pixel marks the index), cycling through formats and sizes (one RGBA PNG too)."""
    for name, n in counts.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            suffix = FORMATS[i % len(FORMATS)]
            image = Image.new("RGB", SIZES[i % 2], COLOURS[name])
            image.putpixel((0, 0), (i % 256, 0, 0))  # files differ in their bytes (JPEG may round the mark away)
            if i == 0:
                image, suffix = image.convert("RGBA"), ".png"
            image.save(folder / name / f"tile{i}{suffix}")


def he_tiles(n: int = 199) -> torch.Tensor:
    """uint8 N×3×28×28, skip-free: the sample's test tiles when SSLPATH_SAMPLE_NPZ names it, else fixed H&E-like
    tiles (positive haematoxylin and eosin, a trace of DAB, varying per pixel), on which the results agree."""
    if SAMPLE and Path(SAMPLE).is_file():
        with np.load(SAMPLE) as npz:
            return torch.from_numpy(npz["test_images"][:n]).permute(0, 3, 1, 2).contiguous()
    gen = torch.Generator().manual_seed(0)
    density = torch.rand(n, 3, 28, 28, generator=gen, dtype=torch.float64) * torch.tensor([0.6, 0.5, 0.05]).view(1, 3, 1, 1)
    return (density_to_rgb(density + 0.02) * 255).round().to(torch.uint8)


SYNTHETIC = [o for o in TINY_DATA if not o.startswith(("data.size", "data.batch_size"))]  # size comes from the checkpoint


def compose_evaluate(*overrides: str) -> DictConfig:
    """conf/evaluate.yaml with these overrides, as `python -m sslpath.evaluate` composes it."""
    return composed("evaluate", overrides)


SMALL = dict(batch_size=4, eval_batch_size=4)


def split_arrays(counts=(20, 6, 6), size=8, num_classes=3, channels=3, seed=0):
    """The six members of a MedMNIST-format npz with random tiles and round-robin labels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(SPLITS, counts):
        shape = (n, size, size, channels) if channels else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % num_classes).astype(np.uint8)[:, None]
    return arrays


def write_npz(path: Path, counts=(20, 6, 6), size=8, num_classes=3, channels=3, **override):
    arrays = {**split_arrays(counts, size, num_classes, channels), **override}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


class Marker:
    """Unpickling it creates `path`: evidence that a reader ran pickle.loads."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def data_files(folder: Path) -> list[str]:
    """What a download left in its folder besides its lock file (empty, kept for the next download)."""
    lock = [p for p in folder.glob(".*.lock")]
    assert all(p.stat().st_size == 0 for p in lock)
    return sorted(p.name for p in folder.iterdir() if p not in lock)


PATHMNIST = [
    "adipose",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
]


def fake_run(
    run_dir: Path,
    *,
    model: str = "baseline",
    run_name: str | None = None,
    seed: int = 0,
    fraction: float = 1.0,
    right: int = 60,
    n: int = 90,
    classes: list[str] = PATHMNIST,
    wall_seconds: float = 150.0,
    epochs: int = 3,
    **metrics: object,
) -> Path:
    """A finished run: n test images (labels cycling through the classes), the first `right` predicted right,
    metrics.json agreeing with them (test AUC as sslpath computes it; written as runs write it), example images
    and validation curves in tb/."""
    labels = np.arange(n) % len(classes)
    preds = np.where(np.arange(n) < right, labels, (labels + 1) % len(classes))
    probs = np.eye(len(classes))[preds] * 0.8 + 0.2 / len(classes)
    logits = torch.from_numpy(np.log(probs))
    auc = classification_results(logits, torch.from_numpy(labels), list(classes))["test_auc"]
    run_dir.mkdir(parents=True)
    record = RunRecord(
        model=model,
        run_name=run_name or model,
        seed=seed,
        label_fraction=fraction,
        test_loss=1.0 - right / n,
        test_acc=right / n,
        test_auc=auc,
        best_val_acc=0.7,
        per_class_acc=dict.fromkeys(classes, 0.5),
        absent_classes=[],
        epochs=epochs,
        wall_seconds=wall_seconds,
        ckpt_path=str(run_dir / "checkpoints" / "best.ckpt"),
        **metrics,
    )
    write_record(run_dir, record)
    rows = ["index,label,pred," + ",".join(f"p_{name}" for name in classes)]
    rows += [f"{i},{y},{p}," + ",".join(f"{v:.6f}" for v in prob) for i, (y, p, prob) in enumerate(zip(labels, preds, probs))]
    (run_dir / "test_predictions.csv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(seed)
    np.savez(
        run_dir / "test_examples.npz",
        index=np.arange(12),
        images=rng.integers(0, 256, (12, 28, 28, 3), dtype=np.uint8),
        labels=labels[:12],
        probs=probs[:12],
    )
    writer = SummaryWriter(str(run_dir / "tb"))
    for epoch in range(epochs):
        step = 10 * (epoch + 1)
        writer.add_scalar("epoch", epoch, step)
        writer.add_scalar("val/acc", 0.3 + 0.1 * epoch + 0.01 * seed, step)
        writer.add_scalar("val/loss", 2.0 - 0.3 * epoch, step)
    writer.close()
    return run_dir


def table(results_md: Path) -> list[dict[str, str]]:
    """The first markdown table of a file, one {column: cell} per row."""
    lines = [line for line in results_md.read_text().split("\n\n## ")[0].splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(rows[0], row)) for row in rows[2:]]
