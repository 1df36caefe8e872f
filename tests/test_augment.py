"""Batched kornia augmentation against the notebook's per-image torchvision recipe, and SimCLR's views.

(The smoke run of scripts/benchmark.py lives in tests/test_benchmark.py.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import kornia.augmentation as K
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from sslpath.data.augment import Normalize, Pipeline
from sslpath.data.synthetic import synthetic_splits
from sslpath.training.build import build_datamodule

from factories import compose_cfg


def reference_transform(mean, std):
    """The notebook's recipe, as scripts/benchmark.py (its reference loader) keeps it: the one copy."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("sslpath_benchmark_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference_transform(mean, std)


def tiles(n: int, size: int = 28) -> torch.Tensor:
    """n synthetic uint8 tiles, N×C×H×W."""
    return synthetic_splits(size, 9, {"train": n, "val": 1, "test": 1}, seed=0)["train"].images


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Pipeline, Normalize, list[float], list[float]]:
    """conf/augment/reference.yaml as the config builds it, and the model's normalisation."""
    cfg = compose_cfg(tmp_path_factory.mktemp("cfg"), ["augment@augment.ssl=reference"])
    mean, std = list(cfg.data.mean), list(cfg.data.std)
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


@pytest.mark.parametrize("augment, clean_view", [("simclr", False), ("reference", True)])
def test_simclr_views_of_one_image_differ(tmp_path, augment, clean_view):
    """The data layer hands SimCLR two different views of each image.

    simclr always crops, so every pair differs; the reference recipe leaves an image untouched when
    all four ops skip it (0.36^4 ≈ 2%), so against a clean view most pairs, not all, differ.
    """
    cfg = compose_cfg(tmp_path, ["model=simclr", f"augment@augment.ssl={augment}", f"model.input.clean_first_view={clean_view}"])
    datamodule = build_datamodule(cfg)
    images = synthetic_splits(16, 9, {"train": 16, "val": 1, "test": 1}, seed=0)["train"].images
    torch.manual_seed(0)
    view1, view2 = datamodule.transform.train_views(images)
    assert view1.shape == view2.shape == (16, 3, 16, 16)
    differs = (view1 - view2).flatten(1).abs().amax(dim=1) > 1e-3
    assert differs.float().mean() >= (0.75 if clean_view else 1.0), differs
    if clean_view:  # the notebook's design: the first view is the image itself, normalised
        torch.testing.assert_close(view1, datamodule.transform(images))
