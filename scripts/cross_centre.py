#!/usr/bin/env python
"""The cross-centre evidence of docs/cross_centre/ (issue 19 item 5), CPU-sized, in one command.

    python scripts/cross_centre.py --sample ../shared/data/pathmnist_sample.npz --out outputs/cross_centre

1. A *simulated* second centre: the sample's test tiles with one seeded, centre-wide HED stain shift
   (every tile's haematoxylin, eosin and DAB densities s -> a·s + b, one (a, b) per stain drawn once from
   --seed; scikit-image rgb2hed units, sslpath.data.stain.jitter_stains), written as a MedMNIST-format npz
   (other_centre.npz: train and val as in the sample, test shifted). Not a real centre: the same tiles, the
   same scanner, only the stain moved.
2. The four recipes of experiment=stain_robust ({none, macenko} × {flips, stain_robust}), one seed, trained
   one after another as one Hydra multirun, each best checkpoint benchmarked under the stain and colour
   corruptions (the experiment's own callback).
3. Each checkpoint evaluated on the simulated centre (plain and with d4 TTA, whose wall times are compared),
   then `python -m sslpath.report` over the runs and those evaluations: its cross-centre table.
4. Data-preparation speed per recipe: training batches through the data module's own on-device path
   (stain normalisation + augmentation + ImageNet normalisation), tiles/s.

Every step is a subprocess of the package's own commands; nothing here computes a reported metric.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from matplotlib.figure import Figure

from sslpath.data.stain import jitter_stains
from sslpath.results.intervals import wilson_interval
from sslpath.results.robustness import read_robustness_record
from sslpath.training.build import build_datamodule

RECIPES = [(norm, aug) for norm in ("none", "macenko") for aug in ("flips", "stain_robust")]


def simulate_centre(sample: Path, out: Path, alpha: float, beta: float, seed: int) -> dict[str, list[float]]:
    """other_centre.npz: the sample with its test tiles stain-shifted by one centre-wide (scale, shift) per stain."""
    rng = np.random.default_rng(seed)
    scale = 1 + alpha * rng.choice([-1.0, 1.0], size=3) * rng.uniform(0.5, 1.0, size=3)
    shift = beta * rng.choice([-1.0, 1.0], size=3) * rng.uniform(0.5, 1.0, size=3)
    with np.load(sample, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    tiles = torch.from_numpy(arrays["test_images"]).permute(0, 3, 1, 2).double() / 255
    shifted = jitter_stains(tiles, torch.tensor(scale).view(1, 3, 1, 1), torch.tensor(shift).view(1, 3, 1, 1))
    arrays["test_images"] = (shifted * 255).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    np.savez_compressed(out, **arrays)
    moved = np.abs(arrays["test_images"].astype(float) - np.load(sample)["test_images"]).mean()
    return {"scale": scale.tolist(), "shift": shift.tolist(), "mean_abs_grey_change": [float(moved)]}


def centre_figure(sample: Path, centre: Path, out: Path, count: int = 8) -> None:
    """The first `count` test tiles of the sample (top) and of the simulated centre (bottom)."""
    with np.load(sample, allow_pickle=False) as a, np.load(centre, allow_pickle=False) as b:
        rows = [a["test_images"][:count], b["test_images"][:count]]
    fig = Figure(figsize=(count * 1.1, 2.5))
    axes = fig.subplots(2, count)
    for r, (tiles, title) in enumerate(zip(rows, ("sample test tiles", "simulated centre (HED shift)"))):
        for c, tile in enumerate(tiles):
            axes[r, c].imshow(tile)
            axes[r, c].axis("off")
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    fig.savefig(out, dpi=120, bbox_inches="tight")


def run(*args: str) -> float:
    """A package command; its wall time in seconds."""
    start = time.perf_counter()
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True)
    return time.perf_counter() - start


def prep_module(sample: Path, norm: str, aug: str, size: int) -> tuple[object, float]:
    """The training data module of one recipe, set up (the normaliser fitted); and its setup seconds."""
    overrides = [f"data.path={sample}", f"data.stain_norm={norm}", f"augment@augment.train={aug}", f"data.size={size}"]
    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    dm = build_datamodule(cfg)
    start = time.perf_counter()
    dm.setup("fit")
    return dm, time.perf_counter() - start


def prep_speed(sample: Path, size: int, rounds: int = 5, batches: int = 5) -> dict[str, dict[str, float]]:
    """Training tiles/s of each recipe's batch preparation alone (stain normalisation, augmentation,
    normalisation, as on_after_batch_transfer runs it) on batches of 64: the best of `rounds` rounds, the
    recipes taking turns, so load from other processes biases no recipe."""
    modules = {f"{n}-{a}": prep_module(sample, n, a, size) for n, a in RECIPES}
    best = dict.fromkeys(modules, 0.0)
    for _ in range(rounds):
        for name, (dm, _) in modules.items():
            images = dm.splits["train"].images[:64]
            dm.transform.train_views(images)  # warm-up
            start = time.perf_counter()
            for _ in range(batches):
                dm.transform.train_views(images)
            best[name] = max(best[name], batches * len(images) / (time.perf_counter() - start))
    return {name: {"prep_tiles_per_s": best[name], "setup_seconds": modules[name][1]} for name in modules}


def epoch_speed(job: Path, train_tiles: int) -> float | None:
    """Training tiles/s of a finished run from its log: epochs 2 to last (the first holds start-up), the
    validation pass included, under whatever else the machine ran."""
    stamps = [
        datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
        for line in (job / "train.log").read_text().splitlines()
        if "sslpath.training.callbacks" in line and "] - epoch " in line
    ]
    if len(stamps) < 3:
        return None
    return (len(stamps) - 1) * train_tiles / (stamps[-1] - stamps[0]).total_seconds()


def corruption_table(jobs: list[Path], severity: int, level: float = 0.95) -> str:
    """Per recipe: clean accuracy, and accuracy under each benchmarked corruption at `severity` and averaged
    over severities; Wilson intervals over the test tiles (sslpath.results.intervals), one seed."""
    lines = []
    for job in jobs:
        record = read_robustness_record(job / "robustness" / "robustness.json")
        n, names = record["summary"]["num_images"], record["summary"]["corruptions"]
        if not lines:
            head = ["recipe", "clean", *(f"{c} s{severity}" for c in names), "mean over all"]
            lines += ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
        cells = [record["run_name"], cell(record["summary"]["clean_acc"], n, level)]
        for name in names:
            acc = next(r["acc"] for r in record["rows"] if r["corruption"] == name and r["severity"] == severity)
            cells.append(cell(acc, n, level))
        cells.append(f"{record['summary']['mean_corruption_acc'] * 100:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cell(acc: float, n: int, level: float) -> str:
    low, high = wilson_interval(acc, n, level)
    return f"{acc * 100:.1f} [{low * 100:.1f}, {high * 100:.1f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", type=Path, required=True, help="the MedMNIST-format sample npz")
    p.add_argument("--out", type=Path, required=True, help="a new folder for everything")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--stem", default="imagenet", help="model.backbone.stem: imagenet (stride-4 stem, CPU-sized) or cifar")
    p.add_argument("--size", type=int, default=32, help="data.size (the imagenet stem needs >= 32 px)")
    p.add_argument("--alpha", type=float, default=0.2, help="the centre's stain scale: 1 ± up to alpha per stain")
    p.add_argument("--beta", type=float, default=0.04, help="the centre's stain shift: up to ± beta per stain (rgb2hed units)")
    p.add_argument("--seed", type=int, default=0, help="seeds the centre's shift and the training runs")
    p.add_argument("--steps", nargs="*", default=["centre", "train", "evaluate", "report", "speed"])
    args = p.parse_args()
    out, sample = args.out.resolve(), args.sample.resolve()
    out.mkdir(parents=True, exist_ok=True)
    centre, sweep = out / "other_centre.npz", out / "sweep"
    if "centre" in args.steps:
        shift = simulate_centre(sample, centre, args.alpha, args.beta, args.seed)
        (out / "other_centre.json").write_text(json.dumps(shift, indent=1))
        centre_figure(sample, centre, out / "other_centre.png")
        print("simulated centre:", shift, flush=True)
    if "train" in args.steps:
        seconds = run(
            "-m", "sslpath.train", "experiment=stain_robust", f"data.path={sample}", f"seed={args.seed}",
            f"trainer.max_epochs={args.epochs}", f"data.batch_size={args.batch_size}",
            f"model.backbone.name={args.backbone}", f"model.backbone.stem={args.stem}", f"data.size={args.size}",
            f"hydra.sweep.dir={sweep}",
        )  # fmt: skip
        (out / "train_seconds.json").write_text(json.dumps({"sweep_seconds": seconds}))
    jobs = sorted(d for d in sweep.iterdir() if (d / "metrics.json").is_file()) if sweep.is_dir() else []
    timings: dict[str, dict[str, float]] = {}
    if "evaluate" in args.steps:
        for job in jobs:
            record = json.loads((job / "metrics.json").read_text())
            for tta in ("false", "true"):
                dest = out / "evaluations" / f"{job.name}_other_centre{'_tta' if tta == 'true' else ''}"
                if not (dest / "metrics.json").is_file():  # a rerun keeps finished evaluations
                    run(
                        "-m", "sslpath.evaluate", f"ckpt={record['ckpt_path']}", f"data.path={centre}", f"out={dest}",
                        f"tta={tta}", f"run_name={record['run_name']}", "report=false",
                    )  # fmt: skip
                timings.setdefault(record["run_name"], {})[f"evaluate_tta_{tta}_seconds"] = json.loads(
                    (dest / "metrics.json").read_text()
                )["wall_seconds"]
        (out / "evaluate_seconds.json").write_text(json.dumps(timings, indent=1))
    if "report" in args.steps:
        evaluations = sorted((out / "evaluations").glob("*_other_centre*"))
        run("-m", "sslpath.report", *map(str, jobs), *map(str, evaluations), f"--out={out / 'report'}", "--no-tensorboard")
        (out / "corruptions.md").write_text(corruption_table(jobs, severity=3))
    if "speed" in args.steps:
        train_tiles = len(np.load(sample)["train_images"])
        speeds = prep_speed(sample, args.size)
        for job in jobs:
            name = json.loads((job / "metrics.json").read_text())["run_name"].removeprefix("baseline-")
            speeds.setdefault(name, {})["run_tiles_per_s"] = epoch_speed(job, train_tiles)
        (out / "speed.json").write_text(json.dumps(speeds, indent=1))
        print("speed:", speeds, flush=True)


if __name__ == "__main__":
    main()
