"""MedMNIST-C-style corruptions on tensors: severity 0 is the image itself, higher severities change
more, draws are seeded per image, the tensor versions agree with MedMNIST-C's PIL/scikit-image ops,
and the configs are checked."""

from __future__ import annotations

import io
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageEnhance
from skimage.color import hsv2rgb, rgb2hsv

from sslpath.core.errors import UserError
from sslpath.data.synthetic import synthetic_splits
from sslpath.evaluation.corruptions import CORRUPTIONS, MAX_SEVERITY, Suite, benchmark, load_suite, relative_drop, splat

CONF = Path(__file__).resolve().parents[1] / "conf" / "corruptions"
RANDOM = [name for name, c in CORRUPTIONS.items() if c.draw is not None]


@pytest.fixture(scope="module")
def suite() -> Suite:
    return load_suite(OmegaConf.load(CONF / "pathology.yaml"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """48 synthetic uint8 28 px tiles (PathMNIST's size), N×3×H×W."""
    return synthetic_splits(28, 9, {"train": 48, "val": 1, "test": 1}, seed=0)["train"].images


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


def test_config_lists_every_corruption(suite):
    assert suite.names == list(CORRUPTIONS) and suite.severities == tuple(range(1, MAX_SEVERITY + 1))
    assert load_suite(OmegaConf.load(CONF / "none.yaml")) is None


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_zero_is_identity_and_damage_grows_with_severity(suite, images, name):
    assert suite.corrupt(images, name, 0) is images
    out = [suite.corrupt(images, name, s) for s in range(1, MAX_SEVERITY + 1)]
    assert all(o.dtype == torch.uint8 and o.shape == images.shape for o in out)
    damage = [mad(o, images) for o in out]
    assert damage[0] > 0.1, damage
    # non-decreasing (MedMNIST-C's motion blur at severities 2 and 3 differs only in negligible taps)
    assert all(b >= a - 0.02 for a, b in pairwise(damage)), damage
    assert damage[-1] > 1.15 * damage[0], damage


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_seeded_per_image_and_independent_of_batching(suite, images, name):
    full = suite.corrupt(images, name, 3)
    assert torch.equal(full, suite.corrupt(images, name, 3))
    halves = torch.cat([suite.corrupt(images[:20], name, 3), suite.corrupt(images[20:], name, 3, first_index=20)])
    assert torch.equal(full, halves)
    other_seed = Suite(params=suite.params, seed=1).corrupt(images, name, 3)
    assert torch.equal(full, other_seed) is (name not in RANDOM)


def test_random_draws_differ_between_images(suite, images):
    same = images[:1].expand(16, -1, -1, -1).contiguous()
    for name in RANDOM:
        out = suite.corrupt(same, name, 5)
        assert len(torch.unique(out.flatten(1), dim=0)) > 1, name


def pil_batch(images: torch.Tensor, fn) -> torch.Tensor:
    out = [np.asarray(fn(Image.fromarray(im))) for im in images.permute(0, 2, 3, 1).numpy()]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(buf)


@pytest.mark.parametrize(
    "name, severity, reference, tolerance",
    [
        ("brightness_up", 5, lambda img, f: ImageEnhance.Brightness(img).enhance(f), 1),
        ("brightness_down", 5, lambda img, f: ImageEnhance.Brightness(img).enhance(f), 1),
        ("contrast_up", 5, lambda img, f: ImageEnhance.Contrast(img).enhance(f), 2),
        ("contrast_down", 5, lambda img, f: ImageEnhance.Contrast(img).enhance(f), 2),
        ("jpeg_compression", 3, jpeg, 2),
        ("saturate", 5, None, 1),
    ],
)
def test_matches_medmnist_c_reference_ops(suite, images, name, severity, reference, tolerance):
    """MedMNIST-C's PIL and scikit-image operations, at the same parameter (rounding aside)."""
    param = suite.param(name, severity)
    if reference is None:  # MedMNIST-C's Saturate: rgb2hsv, S + shift clipped, hsv2rgb

        def reference(img: Image.Image, shift: float) -> np.ndarray:
            hsv = rgb2hsv(np.asarray(img) / 255.0)
            hsv[..., 1] = np.clip(hsv[..., 1] + shift, 0, 1)
            return np.round(np.clip(hsv2rgb(hsv), 0, 1) * 255).astype(np.uint8)

    expected = pil_batch(images, lambda img: reference(img, param))
    diff = (suite.corrupt(images, name, severity).int() - expected.int()).abs()
    assert diff.max() <= tolerance and diff.float().mean() < 0.5, (diff.max(), diff.float().mean())


def test_gaussian_noise_has_the_configured_spread(suite):
    grey = torch.full((8, 3, 28, 28), 128, dtype=torch.uint8)  # mid-grey: no clipping
    for severity in (1, 3):
        noise = suite.corrupt(grey, "gaussian_noise", severity).float().sub(128).div(255)
        assert noise.mean().abs() < 0.01 and noise.std() == pytest.approx(suite.param("gaussian_noise", severity), rel=0.05)


def test_blur_kernels_are_normalised_and_scale_with_tile_size(images):
    disk = splat(torch.tensor([[[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0]]]), torch.ones(1, 3))
    assert disk.shape == (1, 3, 3) and disk.sum() == pytest.approx(1) and torch.equal(disk, disk.flip(-1))
    for name, param, none in (("defocus_blur", 7.0, 0.0), ("motion_blur", (15, 12), (0, 1))):
        # radii are px of reference_size tiles: the same blur is 8x wider on a 28 px tile taken for a 224 px one
        at_224, at_28 = (Suite(params={name: (param,) * 5}, reference_size=r).corrupt(images, name, 1) for r in (224, 28))
        assert mad(at_28, images) > 1.2 * mad(at_224, images) > 0
        assert torch.equal(Suite(params={name: (none,) * 5}).corrupt(images, name, 1), images)  # zero extent: no blur


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"params": {"fog": [1, 2, 3, 4, 5]}}, "unknown corruptions: fog. Choose from stain_shift, brightness_up"),
        ({"params": {"pixelate": [0.5]}, "names": None}, "corruptions.params.pixelate=[0.5] is not a list of 5 parameters"),
        ({"params": {"jpeg_compression": [50, 30, 15.5, 10, 7]}}, "each a JPEG quality, an integer from 1 to 100"),
        ({"params": {"pixelate": [0.8] * 5}, "names": ["fog"]}, "corruptions.names lists fog, not among the configured"),
        ({"params": {"pixelate": [0.8] * 5}, "names": ["motion_blur"]}, "add their parameters under corruptions.params"),
        ({"params": {"pixelate": [0.8] * 5}, "names": "pixelate"}, "is not a non-empty list of corruption names"),
        ({"params": {"pixelate": [0.8] * 5}, "severities": [0, 1]}, "severities=[0, 1] is not a list of distinct integers"),
        ({"params": {"pixelate": [0.8] * 5}, "seed": -1}, "corruptions.seed=-1 is not a non-negative integer"),
        ({"params": {}, "names": ["pixelate"]}, "none: use corruptions=pathology"),
    ],
)
def test_bad_configs_are_refused(cfg, message):
    with pytest.raises(UserError) as err:
        load_suite(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_benchmark_tables_and_summary(images):
    """Severities map to their own images, and the summary is the plain mean over corruptions × severities."""
    suite = Suite(params={"brightness_down": (0.9, 0.7, 0.5, 0.3, 0.1), "gaussian_noise": (0.0,) * 5}, severities=(1, 5))
    threshold = float(images.float().mean((1, 2, 3)).min()) * 0.5  # every clean tile is brighter

    def predict(batch: torch.Tensor) -> torch.Tensor:
        """A "model" that calls bright tiles class 0 and dark ones class 1."""
        dark = (batch.float().mean((1, 2, 3)) < threshold).float()
        return torch.stack([1 - dark, dark], dim=1) * 5

    labels = torch.zeros(len(images), dtype=torch.long)
    result = benchmark(suite, images, labels, ["a", "b"], predict, predict(images), batch_size=10, device=torch.device("cpu"))
    rows = result.rows()
    assert [(r["corruption"], r["severity"], r["param"]) for r in rows] == [
        ("clean", 0, None),
        ("brightness_down", 1, 0.9),
        ("brightness_down", 5, 0.1),
        ("gaussian_noise", 1, 0.0),
        ("gaussian_noise", 5, 0.0),
    ]
    assert [r["acc"] for r in rows] == [1.0, 1.0, 0.0, 1.0, 1.0] and rows[2]["relative_drop"] == 1.0
    summary = result.summary()
    assert summary["mean_corruption_acc"] == 0.75 and summary["relative_drop"] == 0.25
    assert summary["clean_acc"] == 1.0 and summary["num_images"] == len(images) and summary["severities"] == [1, 5]
    assert relative_drop(0.0, 0.0) is None
