"""Batched kornia augmentation against the notebook's per-image torchvision recipe, SimCLR's views,
and a smoke run of scripts/benchmark.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import kornia.augmentation as K
import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import compose_cfg
from sslpath.augment import Normalize, Pipeline, reference_transform
from sslpath.data import BatchLoader, synthetic_splits

REPO = Path(__file__).resolve().parents[1]


def tiles(n: int, size: int = 28) -> torch.Tensor:
    """n synthetic uint8 tiles, N×C×H×W."""
    return synthetic_splits(size, 9, {"train": n, "val": 1, "test": 1}, seed=0)["train"].images


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Pipeline, Normalize, list[float], list[float]]:
    """conf/augment/reference.yaml as the config builds it, and the model's normalisation."""
    cfg = compose_cfg(tmp_path_factory.mktemp("cfg"), ["augment@augment.ssl=reference"])
    mean, std = list(cfg.model.mean), list(cfg.model.std)
    return instantiate(cfg.augment.ssl, _convert_="all"), Normalize(mean, std), mean, std


# ----------------------------------------------------------------------------------------------
# (i) per-image parameters


def test_reference_pipeline_draws_parameters_per_image(reference):
    pipe = reference[0]
    torch.manual_seed(0)
    x = tiles(1).float().div(255).expand(256, -1, -1, -1).contiguous()  # one image, 256 times

    # One call over the batch: (nearly) every copy comes out different. Only images that every op
    # skipped (0.36^4 ≈ 2%) or that got the same flips alone can coincide.
    assert len(torch.unique(pipe(x).flatten(1), dim=0)) > 200

    for op in pipe.ops:
        y = op(x)
        changed = (y - x).flatten(1).abs().amax(dim=1) > 1e-6
        assert 0.45 < changed.float().mean() < 0.85, f"{type(op).__name__} should fire for ~64% of images"
        if isinstance(op, (K.RandomHorizontalFlip, K.RandomVerticalFlip)):
            flipped = x.flip(-1 if isinstance(op, K.RandomHorizontalFlip) else -2)
            assert torch.equal(y[changed], flipped[changed]) and torch.equal(y[~changed], x[~changed])
        else:  # affine and colour jitter: every image that got one got its own parameters
            assert len(torch.unique(y[changed].flatten(1), dim=0)) == int(changed.sum())


# ----------------------------------------------------------------------------------------------
# (ii) same output distribution as the per-image torchvision recipe


def output_stats(out: torch.Tensor, norm: Normalize) -> dict[str, torch.Tensor]:
    """Statistics of a normalised batch that the recipe's parts each move."""
    black, white = norm(torch.zeros(1, 3, 1, 1)), norm(torch.ones(1, 3, 1, 1))
    return {
        "mean": out.mean(dim=(0, 2, 3)),  # normalisation
        "std": out.std(dim=(0, 2, 3)),
        "saturated": (out >= white - 1e-4).float().mean(),  # colour jitter (brightness up to 1.6x) clips at 1
        "fill": (out <= black + 1e-4).all(dim=1).float().mean(),  # RandomAffine's zero fill
    }


def mismatches(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> list[str]:
    """Names of the statistics that differ beyond sampling noise (tolerances: ~2x the spread over seeds)."""
    ok = {
        "mean": (ours["mean"] - ref["mean"]).abs().max() <= 0.15,
        "std": (ours["std"] / ref["std"] - 1).abs().max() <= 0.12,
        "saturated": ref["saturated"] / 3 <= ours["saturated"] <= ref["saturated"] * 3,
        "fill": (ours["fill"] - ref["fill"]).abs() <= 0.05,
    }
    return [name for name, good in ok.items() if not good]


@pytest.fixture(scope="module")
def torchvision_stats(reference) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The notebook's transform, image by image, over 1024 synthetic PIL tiles: inputs, stats, outputs."""
    _, norm, mean, std = reference
    images = tiles(1024)
    transform = reference_transform(mean, std)
    torch.manual_seed(0)
    out = torch.stack([transform(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images])
    return images, output_stats(out, norm), out


def test_reference_pipeline_matches_torchvision_distribution(reference, torchvision_stats):
    pipe, norm, _, _ = reference
    images, ref, ref_out = torchvision_stats
    torch.manual_seed(1)
    augmented = pipe(images.float().div(255))
    assert augmented.min() >= 0 and augmented.max() <= 1  # kornia clamps like torchvision
    ours = norm(augmented)
    # Same value range: both reach black (affine fill) and white (jitter) in every channel.
    torch.testing.assert_close(ours.amin(dim=(0, 2, 3)), ref_out.amin(dim=(0, 2, 3)))
    torch.testing.assert_close(ours.amax(dim=(0, 2, 3)), ref_out.amax(dim=(0, 2, 3)))
    stats = output_stats(ours, norm)
    assert mismatches(stats, ref) == [], {k: (stats[k].tolist(), ref[k].tolist()) for k in ref}


@pytest.mark.parametrize("broken", ["no colour jitter", "normalised before augmenting", "wrong statistics"])
def test_distribution_check_catches_broken_pipelines(reference, torchvision_stats, broken):
    """The tolerances above are tight enough to fail plausible mistakes."""
    pipe, norm, _, _ = reference
    images, ref, _ = torchvision_stats
    x = images.float().div(255)
    torch.manual_seed(1)
    if broken == "no colour jitter":
        out = norm(Pipeline([op for op in pipe.ops if not isinstance(op, K.ColorJitter)])(x))
    elif broken == "normalised before augmenting":
        out = pipe(norm(x))
    else:
        out = Normalize([0.5] * 3, [0.5] * 3)(pipe(x))
    assert mismatches(output_stats(out, norm), ref)


# ----------------------------------------------------------------------------------------------
# (iii) SimCLR's two views


class CaptureInputs(L.Callback):
    """Records what the backbone sees in the first training step."""

    def __init__(self) -> None:
        self.views: torch.Tensor | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if self.views is None:
                self.views = args[0].detach().clone()

        pl_module.backbone.register_forward_pre_hook(hook)


@pytest.mark.parametrize("augment, clean_view", [("simclr", False), ("reference", True)])
def test_simclr_views_of_one_image_differ(tmp_path, augment, clean_view):
    """training_step feeds the backbone two different views of each image.

    simclr always crops, so every pair differs; the reference recipe leaves an image untouched when
    all four ops skip it (0.36^4 ≈ 2%), so against a clean view most pairs, not all, differ.
    """
    cfg = compose_cfg(tmp_path, ["model=ssl", f"augment@augment.ssl={augment}", f"model.clean_view={clean_view}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model, _convert_="all")
    split = synthetic_splits(16, 9, {"train": 16, "val": 1, "test": 1}, seed=0)["train"]
    capture = CaptureInputs()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture], default_root_dir=tmp_path,
    )
    trainer.fit(model, train_dataloaders=BatchLoader(split, 16, shuffle=False))

    view1, view2 = capture.views.chunk(2)
    assert view1.shape == view2.shape == (16, 3, 16, 16)
    differs = (view1 - view2).flatten(1).abs().amax(dim=1) > 1e-3
    assert differs.float().mean() >= (0.75 if clean_view else 1.0), differs
    if clean_view:  # the notebook's design: the first view is the image itself, normalised
        torch.testing.assert_close(view1, model.prepare(split.images))


# ----------------------------------------------------------------------------------------------
# (iv) the benchmark script


def ratio_fits(ratio: float, num: float, den: float) -> bool:
    """`ratio` (printed to 0.01) is num/den of the unrounded throughputs (printed to 0.1 img/s)."""
    return (num - 0.05) / (den + 0.05) - 0.005 <= ratio <= (num + 0.05) / (den - 0.05) + 0.005


def test_benchmark_script_runs_end_to_end(tmp_path):
    docs = tmp_path / "benchmarks.md"
    cmd = [
        sys.executable, str(REPO / "scripts" / "benchmark.py"), "--device", "cpu", "--size", "16", "--steps", "2",
        "--warmup", "1", "--batch-size", "8", "--write-docs", "--docs", str(docs),
    ]
    result = subprocess.run(
        cmd, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]

    number = r"(\d+(?:\.\d+)?)"
    row = re.compile(r"^(baseline|ssl|finetune)" + rf"\s+{number}" * 4 + rf"\s+{number}x\s+\d+/\d+/\d+$", re.M)
    rows = {m[0]: [float(v) for v in m[1:]] for m in row.findall(result.stdout)}
    assert sorted(rows) == ["baseline", "finetune", "ssl"], result.stdout
    for a, b, c, b_over_a, b_over_c in rows.values():
        assert min(a, b, c) > 0
        assert ratio_fits(b_over_a, b, a) and ratio_fits(b_over_c, b, c)

    text = docs.read_text()
    assert text.startswith("# Training throughput benchmarks") and "(b)/(a) ≥ 0.90" in text
    lines = [line for line in text.splitlines() if line.startswith("| 20")]
    assert len(lines) == 3 and all("stem=cifar size=16 batch=8 steps=2 warmup=1" in line for line in lines)
