#!/usr/bin/env python
"""Training throughput (images/s, peak memory) of the supervised baseline and SimCLR, fed three ways.

    (a) compute bound: ready, augmented, normalised float batches on the device (made once by the
        data module's own `transform.train_views`, then replayed): no data work at all;
    (b) real pipeline: the data module exactly as training uses it (BatchLoader over uint8 splits,
        then `on_after_batch_transfer` augments and normalises on the device);
    (c) reference loader: the notebook's torch DataLoader with per-image PIL + torchvision
        transforms (`reference_transform` below), batches copied to the device.

Configs, data modules, models and trainers come from the Hydra config through `sslpath.training.build`, as
`python -m sslpath.train` composes them (SimCLR is the SSL stage a chained fine-tune runs), so all
three modes run the same model, callbacks and precision; only the batches' source differs (with the
default `--experiment reference`, (b) and (c) also apply the same augmentation recipe). Each
mode times `--steps` optimizer steps after `--warmup` untimed ones (allocation, cudnn autotuning,
torch.compile). One dated section per run is appended to docs/benchmarks.md (or --docs).

    python scripts/benchmark.py                                   # CUDA if present, else CPU
    python scripts/benchmark.py --device cuda --precision bf16-mixed --compile --stems cifar
    python scripts/benchmark.py --data synthetic --train-count 89996   # PathMNIST's training shape
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import logging
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from sslpath.core.devices import resolve_device
from sslpath.core.errors import UserError, exit_on_user_error
from sslpath.core.resolvers import auto_precision, register_resolvers
from sslpath.data.augment import Pipeline
from sslpath.data.datamodule import ArrayDataModule
from sslpath.training.build import build_datamodule, build_model, build_trainer
from sslpath.training.chain import stage_config

REPO = Path(__file__).resolve().parents[1]
MODES = {"a": "compute bound", "b": "real pipeline", "c": "reference loader"}
MODELS = ("baseline", "simclr")
BACKBONES = ("resnet18", "tiny")
STEMS = ("cifar", "imagenet", "reference")
READY_BATCHES = 8  # distinct batches (a) cycles through
SECTION = "### Benchmark run"


def reference_transform(mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The notebook's per-image torchvision recipe: mode (c)'s transforms, and the reference that
    tests/test_augment.py compares sslpath's batched kornia pipeline (augment=reference) against."""
    return T.Compose(
        [
            T.RandomApply([T.RandomAffine(degrees=180, translate=(0.45, 0.45), scale=(0.6, 1.35))], p=0.64),
            T.RandomVerticalFlip(p=0.64),
            T.RandomHorizontalFlip(p=0.64),
            T.RandomApply([T.ColorJitter(0.6, 0.3, 0.3, 0.3)], p=0.64),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


# ----------------------------------------------------------------------------------------------
# Configs: what `python -m sslpath.train` would run


def compose_configs(args: argparse.Namespace, device: torch.device, backbone: str, stem: str) -> dict[str, DictConfig]:
    """The run config of each model; SimCLR's is the SSL stage of a chained `model=finetune`."""
    overrides = [
        *([f"experiment={args.experiment}"] if args.experiment != "none" else []),
        "trainer=gpu" if device.type == "cuda" else "trainer=cpu",
        f"trainer.precision={args.precision}",
        f"model.backbone.name={backbone}",
        f"model.backbone.stem={stem}",
        f"model.compile={str(args.compile).lower()}",
        f"data.size={args.size}",
        f"seed={args.seed}",
        *([f"data.batch_size={args.batch_size}"] if args.batch_size else []),
    ]
    if args.data == "synthetic":
        overrides += ["data=synthetic", "data.val_count=9", "data.test_count=9"]
    register_resolvers()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        composed = {
            "baseline": compose("train", overrides=["model=baseline", *overrides]),
            "simclr": compose("train", overrides=["model=finetune", *overrides]),
        }
    cfgs = {}
    for name in args.models:
        cfg = composed[name]
        with open_dict(cfg):
            if args.data != "synthetic":
                cfg.data.path = str(Path(args.data).expanduser().resolve())
            else:  # by default one epoch covers every step: no epoch boundary is timed
                cfg.data.train_count = args.train_count or cfg.data.batch_size * (args.warmup + args.steps + 1)
            cfg.paths.output_dir = tempfile.gettempdir()  # replaced per measurement
        cfgs[name] = stage_config(cfg, Path(cfg.paths.output_dir)) if name == "simclr" else cfg
    return cfgs


def configure_for_timing(cfg: DictConfig, steps: int, out_dir: Path) -> None:
    """Stop after `steps`, crossing epochs if the data runs out; no validation; files under out_dir.

    The config's callbacks and logger stay (they run in training too), except the progress bar.
    """
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.trainer.update(
            max_steps=steps,
            max_epochs=-1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        if cfg.get("callbacks"):
            cfg.callbacks.pop("progress_bar", None)


# ----------------------------------------------------------------------------------------------
# Batch sources for (a) and (c)


class ReadyBatches:
    """Prepared batches, cycled for `n` steps per epoch: the compute-bound loader."""

    def __init__(self, batches: list[tuple[torch.Tensor, ...]], n: int) -> None:
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return itertools.islice(itertools.cycle(self.batches), self.n)


def ready_batches(dm: ArrayDataModule, device: torch.device, count: int) -> list[tuple[torch.Tensor, ...]]:
    """The first `count` training batches, through the data module's own training transform."""
    transform = dm.transform.to(device)
    batches = []
    with torch.no_grad():
        for images, labels in itertools.islice(dm.train_dataloader(), count):
            batches.append((*transform.train_views(images.to(device)), labels.to(device)))
    return batches


class PILDataset(Dataset):
    """The notebook's dataset: a PIL image per item, one torchvision transform per view."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transforms: Sequence[Any]) -> None:
        self.images = np.ascontiguousarray(images.permute(0, 2, 3, 1).cpu().numpy())  # N×H×W×C, as stored
        self.labels, self.transforms = labels.cpu().numpy(), transforms

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        image = Image.fromarray(self.images[i])
        return (*(t(image) for t in self.transforms), int(self.labels[i]))


def reference_loader(dm: ArrayDataModule, cfg: DictConfig, workers: int) -> DataLoader:
    """Same views as (b) (count, clean first view, none when the config augments nothing), each
    made by the notebook's per-image recipe."""
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    clean, augmented = T.Compose([T.ToTensor(), T.Normalize(mean, std)]), reference_transform(mean, std)
    t = dm.transform
    no_augment = isinstance(t.augment, Pipeline) and len(t.augment.ops) == 0
    views = [clean if no_augment or (i == 0 and t.clean_first_view) else augmented for i in range(t.views)]
    train = dm.splits["train"]
    return DataLoader(
        PILDataset(train.images, train.labels, views),
        batch_size=dm.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


# ----------------------------------------------------------------------------------------------
# Timing and memory


class StepTimer(L.Callback):
    """Wall time and images of optimizer steps warmup+1 … warmup+steps, data loading included."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start: float | None = None
        self.seconds: float | None = None
        self.images = 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step  # optimizer steps done, this one included
        if self.warmup < step <= self.warmup + self.steps:
            self.images += len(batch[-1])  # source images: the labels, one per image whatever the views
        if step == self.warmup:
            self.start = self._now()
        elif step == self.warmup + self.steps and self.start is not None:
            self.seconds = self._now() - self.start


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: reset this process's peak RSS (VmHWM) to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU allocation on CUDA; peak RSS (since the last reset where Linux allows it) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def measure(
    cfg: DictConfig, modes: Sequence[str], args: argparse.Namespace, device: torch.device, work: Path
) -> dict[str, tuple[float, float]]:
    """(images/s, peak MiB) per mode, each on a fresh model and trainer.

    Data is loaded before the peak-memory reset, so the peak is training's: (b) counts its splits
    (on the device when they fit, as in training), (a) its ready batches, (c) neither.
    """
    source: ArrayDataModule | None = None  # (a) and (c): the training split, held on the host
    results = {}
    for mode in modes:
        configure_for_timing(cfg, args.warmup + args.steps, work / mode)
        timer = StepTimer(args.warmup, args.steps, device)
        trainer = build_trainer(cfg, [timer])
        if mode == "b":
            dm = build_datamodule(cfg)
            dm.trainer = trainer  # what fit() does first: setup() places the splits on its device
            dm.setup("fit")
        elif source is None:
            dm = source = build_datamodule(cfg)
            source.setup("fit")
        else:
            dm = source
        L.seed_everything(cfg.seed, verbose=False)
        model = build_model(cfg, dm.num_classes)
        loader: Any = None
        if mode == "a":
            loader = ReadyBatches(ready_batches(source, device, READY_BATCHES), args.warmup + args.steps)
        elif mode == "c":
            loader = reference_loader(source, cfg, args.workers)
        reset_peak_memory(device)
        if mode == "b":
            trainer.fit(model, datamodule=dm)  # setup() again is a no-op
        else:
            trainer.fit(model, train_dataloaders=loader)
        if timer.seconds is None:
            raise UserError(f"mode ({mode}) stopped after {trainer.global_step} steps; lower --steps/--warmup.")
        results[mode] = (timer.images / timer.seconds, peak_memory_mib(device))
        print(f"  ({mode}) {MODES[mode]:<17}{results[mode][0]:10.1f} img/s  {results[mode][1]:8.0f} MiB", flush=True)
        del trainer, model, dm, loader
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


# ----------------------------------------------------------------------------------------------
# Report


def machine(device: torch.device) -> str:
    """CPU model and usable cores (the reference loader runs there), plus the GPU when one is used."""
    cpu = platform.processor() or "unknown CPU"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    desc = f"{cpu}, {cores} cores"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); {desc}"
    return desc


def settings(args: argparse.Namespace, cfgs: dict[str, DictConfig]) -> str:
    cfg = next(iter(cfgs.values()))
    data = f"synthetic train_count={cfg.data.train_count}" if args.data == "synthetic" else Path(args.data).name
    return (
        f"experiment={args.experiment} device={args.device_used} precision={args.precision} "
        f"compile={'on' if args.compile else 'off'} size={args.size} batch={cfg.data.batch_size} "
        f"steps={args.steps} warmup={args.warmup} workers(c)={args.workers} threads={torch.get_num_threads()} "
        f"data={data} channels_last={cfg.data.channels_last} seed={args.seed}"
    )


def table(rows: list[tuple[str, str, str, dict[str, tuple[float, float]]]], modes: Sequence[str]) -> str:
    head = ["backbone", "stem", "model", *(f"({m}) img/s" for m in modes)]
    ratios = [(n, d) for n, d in (("b", "a"), ("b", "c")) if n in modes and d in modes]
    head += [f"({n})/({d})" for n, d in ratios] + [f"peak MiB {'/'.join(modes)}"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (len(modes) + len(ratios)) + "---|"]
    for backbone, stem, model, res in rows:
        cells = [backbone, stem, model, *(f"{res[m][0]:.1f}" for m in modes)]
        cells += [f"{res[n][0] / res[d][0]:.2f}" for n, d in ratios]
        cells.append("/".join(f"{res[m][1]:.0f}" for m in modes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def append_to_docs(path: Path, section: str) -> None:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Training throughput benchmarks\n\nSections appended by `scripts/benchmark.py`.\n")
    text = path.read_text()
    with path.open("a") as f:
        f.write(("" if text.endswith("\n") else "\n") + "\n" + section + "\n")
    print(f"appended to {path}")


# ----------------------------------------------------------------------------------------------
# Entry point


def choices(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: use a comma-separated list of {', '.join(allowed)}")
        return list(dict.fromkeys(values))

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=choices(MODELS), default=list(MODELS), help="baseline,simclr (default both)")
    p.add_argument("--backbones", type=choices(BACKBONES), default=["resnet18"], help="resnet18,tiny (tiny ignores the stem)")
    p.add_argument(
        "--stems", type=choices(STEMS), default=["cifar", "reference"], help="ResNet-18 stems (default cifar,reference)"
    )
    p.add_argument("--modes", type=choices(tuple(MODES)), default=list(MODES), help="a,b,c (default all)")
    p.add_argument(
        "--experiment",
        choices=("reference", "simclr", "none"),
        default="reference",
        help="recipe composed in (default reference: (b) augments like (c); none: train.yaml's defaults)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="trainer=gpu or trainer=cpu")
    p.add_argument("--precision", choices=("auto", "32-true", "bf16-mixed"), default="auto", help="auto: bf16-mixed on CUDA")
    p.add_argument(
        "--compile", action="store_true", help="model.compile=true: torch.compile the backbone (compilation falls in the warm-up)"
    )
    p.add_argument("--size", type=int, default=28, help="data.size: tile size in pixels (default 28)")
    p.add_argument("--batch-size", type=int, help="data.batch_size (default: the experiment's, 96 for reference)")
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps per model and mode (default 50)")
    p.add_argument(
        "--warmup", type=int, default=10, help="untimed steps first: allocation, cudnn autotuning, compilation (default 10)"
    )
    p.add_argument("--data", default="synthetic", help="synthetic, or a MedMNIST-format PATH.npz (data=pathmnist data.path=PATH)")
    p.add_argument(
        "--train-count", type=int, help="synthetic training images (default: enough for warm-up + steps; 89996 = PathMNIST)"
    )
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of (c) (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--docs",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="markdown file the section is appended to (default docs/benchmarks.md)",
    )
    p.add_argument("--no-docs", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    args.modes = [m for m in MODES if m in args.modes]  # columns in the order a, b, c
    if min(args.steps, args.warmup) < 1 or min(args.batch_size or 2, args.train_count or 2) < 2 or args.workers < 0:
        p.error("--steps and --warmup must be >= 1, --batch-size and --train-count >= 2, --workers >= 0")
    return args


def quiet() -> None:
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning's notes on choices made here on purpose (no validation, few workers for (c)).
    for message in (
        ".*does not have many workers.*",
        ".*could not find the monitored key.*",
        ".*LeafSpec.*",
        ".*max_epochs=-1.*",
        ".*limit_val_batches=0.*",
        ".*val_dataloader.*",
        ".*logging interval.*",
    ):
        warnings.filterwarnings("ignore", message)


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    quiet()
    with exit_on_user_error("benchmark.py"):
        device = resolve_device(args.device)
        args.device_used = device.type
        if args.precision == "auto":
            args.precision = auto_precision() if device.type == "cuda" else "32-true"
        if args.data != "synthetic" and not Path(args.data).expanduser().is_file():
            raise UserError(f"--data {args.data}: no such file; pass a MedMNIST-format .npz or `synthetic`.")
        rows = []
        with tempfile.TemporaryDirectory(prefix="sslpath-bench-") as work:
            for backbone in args.backbones:
                for stem in args.stems if backbone == "resnet18" else args.stems[:1]:
                    cfgs = compose_configs(args, device, backbone, stem)
                    for name, cfg in cfgs.items():
                        print(f"{backbone} {stem if backbone == 'resnet18' else '-'} {name}:", flush=True)
                        res = measure(cfg, args.modes, args, device, Path(work) / f"{backbone}-{stem}-{name}")
                        rows.append((backbone, stem if backbone == "resnet18" else "-", name, res))
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        section = (
            f"{SECTION} {date} · {machine(device)} · torch {torch.__version__}\n\n"
            f"Settings: `{settings(args, cfgs)}`\n\n{table(rows, args.modes)}\n"
        )
    print("\n" + section)
    if not args.no_docs:
        append_to_docs(args.docs, section)
    return section


if __name__ == "__main__":
    main()
