#!/usr/bin/env python
"""Training throughput of each model, fed three ways, in one process.

    (a) compute bound: one ready, normalised float batch already on the device, fed again and
        again: no data work at all, the most any pipeline could reach;
    (b) ours: BatchLoader over a uint8 split held on the device, then the model's own
        `prepare(..., augment=True)` (kornia, batched, on the device): what `sslpath.train` runs;
    (c) reference: the notebook's recipe: torchvision per-image PIL transforms in a torch
        DataLoader (for SimCLR one clean and one augmented view), batches copied to the device.

Every mode runs the module's own `training_step` in a real `lightning.Trainer` (forward, loss,
metrics, logging, backward, optimizer step, precision plugin), so the three differ only in where
the batch comes from. For (a) and (c) the batch arrives ready, so the module's augmentation and
normalisation become pass-throughs (see `take_ready_batches`).

    python scripts/benchmark.py --backbone cifar
    python scripts/benchmark.py --backbone reference --ssl-augment reference --write-docs
"""

from __future__ import annotations

import argparse
import datetime
import importlib.resources
import itertools
import logging
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from sslpath.augment import reference_transform
from sslpath.backbones import check_input_size
from sslpath.config import auto_precision
from sslpath.data import BatchLoader, Split, read_npz, resize_splits, synthetic_splits
from sslpath.errors import UserError, exit_on_user_error
from sslpath.models import Classifier

REPO = Path(__file__).resolve().parents[1]
MODELS = ("baseline", "ssl", "finetune")
MODES = {"a": "compute bound", "b": "ours", "c": "reference"}
AUGMENTS = sorted(
    p.name.removesuffix(".yaml")
    for p in (importlib.resources.files("sslpath.conf") / "augment").iterdir()
    if p.name.endswith(".yaml")
)
NUM_CLASSES = 9

DOCS_HEADER = """\
# Training throughput benchmarks

Rows are appended by `python scripts/benchmark.py --write-docs`; nothing here is typed by hand.
Each row times one model's Lightning training step (forward, loss, metrics, backward, optimizer
step) fed three ways, in one process, after warm-up steps:

- **(a) compute bound**: one ready, normalised float batch already on the device, fed again and
  again: no data work, the ceiling for any pipeline.
- **(b) ours**: `BatchLoader` over the uint8 split held on the device, then the model's own
  `prepare(..., augment=True)` (kornia, batched on the device), as `sslpath.train` runs it.
- **(c) reference**: the notebook's pipeline: torchvision per-image PIL transforms
  (`sslpath.augment.reference_transform`; for ssl one clean and one augmented view) in a torch
  `DataLoader` (`workers` processes), batches copied to the device.

Throughput counts source images per second; ssl trains on two views of each image. (b) uses the
augmentation configs named in *settings* (`ssl_aug` for ssl, `train_aug` for baseline and finetune);
(c) always uses the reference recipe, so `ssl_aug=reference` is the like-for-like comparison.
Finetune is `FineTune` without a checkpoint (same compute). Peak memory, in MiB, per mode (a/b/c):
`torch.cuda.max_memory_allocated` on a GPU (only (b) holds the uint8 split there), the process's
peak RSS (VmHWM, reset before each mode; `getrusage` high-water mark where that is impossible) on a
CPU.

Targets: **(b)/(a) ≥ 0.90** everywhere (data work hides behind compute) and **(b)/(c) ≥ 5×** for
ssl on a GPU.

| date | machine | torch | settings | model | (a) img/s | (b) img/s | (c) img/s | (b)/(a) | (b)/(c) | peak MiB a/b/c |
|---|---|---|---|---|---:|---:|---:|---:|---:|---|
"""


@dataclass
class Result:
    model: str
    img_per_s: dict[str, float] = field(default_factory=dict)  # by mode
    peak_mib: dict[str, float] = field(default_factory=dict)

    def ratio(self, num: str, den: str) -> float:
        return self.img_per_s[num] / self.img_per_s[den]


# ----------------------------------------------------------------------------------------------
# Models and data


def compose_model_configs(args: argparse.Namespace) -> tuple[dict[str, DictConfig], dict[str, str]]:
    """Each model's config as `sslpath.train` composes it (same groups, defaults), and the augment choices."""
    overrides = [
        "data=synthetic",
        f"data.size={args.size}",
        f"model.backbone.stem={args.backbone}",
        f"model.channels_last={str(args.channels_last).lower()}",
    ]
    if args.ssl_augment:
        overrides.append(f"augment@augment.ssl={args.ssl_augment}")
    if args.train_augment:
        overrides.append(f"augment@augment.train={args.train_augment}")
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        cfgs = {
            name: compose("train", overrides=[f"model={name}", *overrides], return_hydra_config=True)
            for name in args.models
        }
    choices = next(iter(cfgs.values())).hydra.runtime.choices
    return {name: cfg.model for name, cfg in cfgs.items()}, {
        "ssl": choices["augment@augment.ssl"],
        "train": choices["augment@augment.train"],
    }


def build_model(cfg: DictConfig, seed: int) -> Classifier:
    """A fresh module per measurement, same seed: no mode inherits another's optimizer state."""
    torch.manual_seed(seed)
    return instantiate(cfg, _convert_="all")


def load_train_split(args: argparse.Namespace) -> Split:
    """The training split as one uint8 N×C×H×W tensor: synthetic by default, or a MedMNIST npz."""
    if args.data is None:
        # One pass covers every step (+2 for Lightning's prefetch): no epoch boundary in the timing.
        count = args.batch_size * (args.warmup + args.steps + 2)
        return synthetic_splits(args.size, NUM_CLASSES, {"train": count, "val": 1, "test": 1}, args.seed)["train"]
    return resize_splits(read_npz(args.data, NUM_CLASSES), args.size)["train"]


class Repeat:
    """One ready batch, `n` times: the compute-bound loader."""

    def __init__(self, batch: tuple[torch.Tensor, ...], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return itertools.repeat(self.batch, self.n)


class PILDataset(Dataset):
    """MedMNIST-style dataset: a PIL image per item from H×W×C uint8 arrays, then per-image transforms.

    Each transform makes one view; an item is (view, [view, ...], label).
    """

    def __init__(self, split: Split, transforms: Sequence[Callable[[Image.Image], torch.Tensor]]) -> None:
        self.images = np.ascontiguousarray(split.images.permute(0, 2, 3, 1).cpu().numpy())
        self.labels = split.labels.cpu().numpy()
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        image = Image.fromarray(self.images[i])
        return (*(t(image) for t in self.transforms), int(self.labels[i]))


class Replay(nn.Module):
    """Stands in for a model's augmentation when the views arrive ready-made.

    Returns the queued views in turn, then its input. SimCLR calls `augment` once per augmented view
    (with clean_view its first view is the input itself), so given the batch's first view as input
    and its second view queued, it trains on exactly those two.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.queue.pop(0) if self.queue else x


def take_ready_batches(model: Classifier) -> None:
    """Make `model` train on batches (view, [second view,] labels) that are augmented and normalised.

    Its augmentation and normalisation become pass-throughs, so `training_step` does the same
    model work as in (b) minus the data work; Lightning calls the hook once the batch is on the device.
    """
    replay = Replay()
    model.augment, model.normalize = replay, nn.Identity()

    def split_views(batch: Sequence[torch.Tensor], dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        *views, labels = batch
        replay.queue = list(views[1:])
        return views[0], labels

    model.on_after_batch_transfer = split_views


def reference_loader(split: Split, cfg: DictConfig, ssl: bool, args: argparse.Namespace) -> DataLoader:
    """The notebook's input pipeline; for SimCLR its first view is clean, its second augmented."""
    augmented = reference_transform(cfg.mean, cfg.std)
    clean = T.Compose([T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    dataset = PILDataset(split, [clean, augmented] if ssl else [augmented])
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )


# ----------------------------------------------------------------------------------------------
# Timing


class StepTimer(L.Callback):
    """Wall time and images of optimisation steps warmup+1 … warmup+steps, data loading included."""

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
            self.images += len(batch[-1])
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
    """Peak GPU allocation, or peak RSS (since the last reset where Linux allows it)."""
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


def time_training(
    model: Classifier, loader: Any, args: argparse.Namespace, device: torch.device
) -> tuple[float, float]:
    """Images/second and peak memory (MiB) of `args.steps` training steps after `args.warmup`."""
    timer = StepTimer(args.warmup, args.steps, device)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=args.precision,
            max_steps=args.warmup + args.steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            benchmark=device.type == "cuda",  # as trainer=gpu
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            default_root_dir=root,
        )
        reset_peak_memory(device)
        trainer.fit(model, train_dataloaders=loader)
        peak = peak_memory_mib(device)
    if timer.seconds is None:
        raise UserError(
            f"the loader ran out after {trainer.global_step} steps; lower --steps/--warmup or use more data."
        )
    return timer.images / timer.seconds, peak


def benchmark_model(name: str, cfg: DictConfig, split: Split, args: argparse.Namespace, device: torch.device) -> Result:
    """(a), (b) and (c) for one model, each on a fresh copy of it.

    Only (b) holds the split on the device, so (a)'s and (c)'s peak memory leave it out.
    """
    result = Result(name)
    for mode in MODES:
        model = build_model(cfg, args.seed).to(device)
        loader: Any
        if mode == "a":
            images, labels = next(iter(BatchLoader(split, args.batch_size, shuffle=True, seed=args.seed)))
            with torch.no_grad():
                ready = model.prepare(images.to(device))  # normalised float, channels_last where the model wants it
            take_ready_batches(model)
            loader = Repeat((ready, labels.to(device)), args.warmup + args.steps + 2)
        elif mode == "b":
            on_device = Split(split.images.to(device), split.labels.to(device))
            loader = BatchLoader(on_device, args.batch_size, shuffle=True, seed=args.seed)
        else:
            take_ready_batches(model)
            loader = reference_loader(split, cfg, ssl=name == "ssl", args=args)
        result.img_per_s[mode], result.peak_mib[mode] = time_training(model, loader, args, device)
        print(f"  {name:<9}({mode}) {MODES[mode]:<14}{result.img_per_s[mode]:10.1f} img/s", flush=True)
        del model, loader
    return result


# ----------------------------------------------------------------------------------------------
# Report


def machine(device: torch.device) -> str:
    """CPU model and usable cores (the reference pipeline runs there), plus the GPU if one is used."""
    cpu = platform.processor() or "unknown CPU"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    desc = f"{cpu}, {cores} cores"
    return f"{torch.cuda.get_device_name(device)}; {desc}" if device.type == "cuda" else desc


def settings(args: argparse.Namespace, augments: dict[str, str]) -> str:
    return " ".join(
        [
            f"stem={args.backbone}",
            f"size={args.size}",
            f"batch={args.batch_size}",
            f"steps={args.steps}",
            f"warmup={args.warmup}",
            f"precision={args.precision}",
            f"channels_last={'on' if args.channels_last else 'off'}",
            f"ssl_aug={augments['ssl']}",
            f"train_aug={augments['train']}",
            f"workers={args.workers}",
            f"threads={torch.get_num_threads()}",
            f"data={Path(args.data).name if args.data else 'synthetic'}",
        ]
    )


def print_table(results: list[Result]) -> None:
    head = ("model", "(a) img/s", "(b) img/s", "(c) img/s", "(b)/(a)", "(b)/(c)", "peak MiB a/b/c")
    print(f"\n{head[0]:<10}" + "".join(f"{h:>11}" for h in head[1:6]) + f"  {head[6]}")
    for r in results:
        speeds = "".join(f"{r.img_per_s[m]:11.1f}" for m in MODES)
        peaks = "/".join(f"{r.peak_mib[m]:.0f}" for m in MODES)
        print(f"{r.model:<10}{speeds}{r.ratio('b', 'a'):11.2f}{r.ratio('b', 'c'):10.2f}x  {peaks}")


def append_to_docs(path: Path, results: list[Result], device: torch.device, setting: str) -> None:
    """Append one row per model; the file and its header are created on first use."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DOCS_HEADER)
    text = path.read_text()
    date = datetime.date.today().isoformat()
    rows = [
        f"| {date} | {machine(device)} | {torch.__version__} | {setting} | {r.model} | "
        + " | ".join(f"{r.img_per_s[m]:.1f}" for m in MODES)
        + f" | {r.ratio('b', 'a'):.2f} | {r.ratio('b', 'c'):.2f}x | "
        + "/".join(f"{r.peak_mib[m]:.0f}" for m in MODES)
        + " |"
        for r in results
    ]
    with path.open("a") as f:
        f.write(("" if text.endswith("\n") else "\n") + "\n".join(rows) + "\n")
    print(f"appended {len(rows)} rows to {path}")


# ----------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=("cifar", "imagenet", "reference"), default="cifar", help="ResNet-18 stem")
    p.add_argument("--size", type=int, default=28, help="tile size in pixels")
    p.add_argument("--batch-size", type=int, default=96, help="images per step (96, the notebook's, keeps (c) comparable)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per model and mode")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (allocation, cudnn tuning, workers)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "32", "bf16-mixed"), default="auto", help="auto: bf16-mixed on CUDA")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="model.channels_last")
    p.add_argument("--ssl-augment", choices=AUGMENTS, help="augment.ssl for ssl's (b) (default: the config's)")
    p.add_argument("--train-augment", choices=AUGMENTS, help="augment.train for the others' (b) (default: the config's)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for (c) (0, the notebook's)")
    p.add_argument("--data", metavar="NPZ", help="MedMNIST-format npz to use instead of synthetic tiles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-docs", action="store_true", help="append the results to --docs")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md", help="results table to append to")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.batch_size < 2:
        p.error("--steps and --warmup must be >= 1 and --batch-size >= 2")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU; use --device cpu or auto.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def main(argv: Sequence[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    # Lightning's notes on choices made here on purpose (no val loader, few workers for (c)).
    for message in (".*does not have many workers.*", ".*no `val_dataloader`.*", ".*LeafSpec.*"):
        warnings.filterwarnings("ignore", message)
    with exit_on_user_error("benchmark"):
        device = resolve_device(args.device)
        if args.precision == "auto":
            args.precision = auto_precision() if device.type == "cuda" else "32-true"
        elif args.precision == "32":
            args.precision = "32-true"
        check_input_size(args.backbone, args.size)
        cfgs, augments = compose_model_configs(args)
        split = load_train_split(args)
        setting = settings(args, augments)
        print(f"{machine(device)} | torch {torch.__version__} | {setting}", flush=True)
        results = [benchmark_model(name, cfgs[name], split, args, device) for name in args.models]
    print_table(results)
    if args.write_docs:
        append_to_docs(args.docs, results, device, setting)
    return results


if __name__ == "__main__":
    main()
