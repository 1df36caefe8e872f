"""MedMNIST-C corruptions on tensors: severity 0 is the image itself, each severity changes tiles visibly
more than the one before, draws are seeded per image, every corruption agrees with MedMNIST-C's own
operation (Pillow, scikit-image, OpenCV's disk filter, ImageMagick's motion blur; tests/medmnistc_reference.py)
at every severity, rounding included, and the configs are checked."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import medmnistc_reference as reference
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sslpath.core.errors import UserError
from sslpath.data.corruptions import (
    CORRUPTIONS,
    MAX_SEVERITY,
    Suite,
    _border_index,
    disk_kernel,
    load_suite,
)
from sslpath.data.stain import stain_density
from sslpath.data.synthetic import synthetic_splits
from sslpath.evaluation.benchmark import benchmark
from sslpath.results.robustness import relative_drop

from factories import SAMPLE

CONF = Path(__file__).resolve().parents[1] / "conf" / "corruptions"
RANDOM = [name for name, c in CORRUPTIONS.items() if c.draw is not None]


@pytest.fixture(scope="module")
def suite() -> Suite:
    return load_suite(OmegaConf.load(CONF / "pathology.yaml"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """48 synthetic uint8 28 px tiles (PathMNIST's size), N×3×H×W."""
    return synthetic_splits(28, 9, {"train": 48, "val": 1, "test": 1}, seed=0)["train"].images


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    """Real tiles, skip-free: 96 of the sample's test tiles when SSLPATH_SAMPLE_NPZ names it, else 96
    synthetic 28 px tiles."""
    if SAMPLE and Path(SAMPLE).is_file():
        with np.load(SAMPLE) as npz:
            return torch.from_numpy(npz["test_images"][:96]).permute(0, 3, 1, 2).contiguous()
    return synthetic_splits(28, 9, {"train": 96, "val": 1, "test": 1}, seed=0)["train"].images


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().mean())


def test_config_lists_every_corruption(suite):
    assert suite.names == list(CORRUPTIONS) and suite.severities == tuple(range(1, MAX_SEVERITY + 1))
    assert load_suite(OmegaConf.load(CONF / "none.yaml")) is None


VISIBLE_FIRST = 2.0  # grey levels (of 255): severity 1 changes tiles at least this much on average
VISIBLE_STEP = 1.0  # and each severity's tiles differ from the previous severity's at least this much


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severities_change_tiles_monotonically_and_visibly(suite, tiles, name):
    """Mean change from the clean tile strictly grows with severity, severity 1 is visible, and consecutive
    severities differ visibly (MedMNIST-C's own motion-blur severities 2 and 3 are one kernel to 2e-5)."""
    assert suite.corrupt(tiles, name, 0) is tiles
    out = [tiles] + [suite.corrupt(tiles, name, s) for s in range(1, MAX_SEVERITY + 1)]
    assert all(o.dtype == torch.uint8 and o.shape == tiles.shape for o in out)
    damage = [mad(o, tiles) for o in out[1:]]
    steps = [mad(b, a) for a, b in pairwise(out[1:])]
    assert damage[0] >= VISIBLE_FIRST, damage
    assert all(b > a for a, b in pairwise(damage)), damage
    assert min(steps) >= VISIBLE_STEP, steps


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


def as_images(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def reference_batch(name: str, images: torch.Tensor, param, draws: torch.Tensor | None) -> torch.Tensor:
    """MedMNIST-C's operation image by image, handed sslpath's own random draws."""
    per_image = [None] * len(images) if draws is None else draws.numpy()
    if name == "gaussian_noise":
        per_image = as_images(draws)
    out = [reference.apply(name, im, param, d) for im, d in zip(as_images(images), per_image, strict=True)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("severity", range(1, MAX_SEVERITY + 1))
def test_pixelate_is_pillows_box_both_ways(tiles, severity):
    """MedMNIST-C's Pixelate is Pillow BOX down and BOX up, at every one of its PathMNIST severities."""
    suite = Suite(params={"pixelate": tuple(reference.PATHMNIST["pixelate"])})
    factor = suite.param("pixelate", severity)
    expected = torch.from_numpy(np.stack([reference.pixelate(im, factor) for im in as_images(tiles)])).permute(0, 3, 1, 2)
    diff = (suite.corrupt(tiles, "pixelate", severity).int() - expected.int()).abs()
    assert diff.max() <= 1, (factor, diff.max(), diff.float().mean())


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_is_the_reference_operation(suite, tiles, name):
    """At every severity (MedMNIST-C's PathMNIST parameters where it has them), on 32 tiles: within one
    grey level everywhere, and rounding as the reference (truncation or rounding would differ by 0.5 on
    average). stain_shift: rgb2hed clips negative stain amounts, sslpath keeps them (invertible), which
    moves the pixels whose clean stains are negative further (docs/methods.md)."""
    images = tiles[:32]
    published = {**reference.PATHMNIST, "gaussian_noise": reference.GAUSSIAN_NOISE_DERMAMNIST}
    suite = Suite(params={name: tuple(published.get(name, suite.params[name]))})
    draws = suite.draws(name, images)
    # stain_shift: compared where no clean stain is negative (99.3 % of the sample's pixels, 20 % of synthetic ones)
    compared = negative_stain(images).logical_not().expand_as(images) if name == "stain_shift" else torch.ones_like(images).bool()
    assert compared.float().mean() > 0.1
    for severity in range(1, MAX_SEVERITY + 1):
        expected = reference_batch(name, images, suite.param(name, severity), draws)
        diff = (suite.apply(name, images, severity, draws).int() - expected.int()).abs()[compared]
        assert diff.float().mean() < 0.02 and diff.max() <= 1, (severity, diff.float().mean(), diff.max())


def negative_stain(images: torch.Tensor) -> torch.Tensor:
    """N×1×H×W: pixels where some stain amount is negative, which scikit-image's rgb2hed clips to 0."""
    return (stain_density(images.double() / 255) < 0).any(1, keepdim=True)


def test_kernels_and_borders_are_the_references(tiles):
    for radius, alias in ((3, 0.1), (7, 0.3), (0, 0.2), (9, 0.5), (9.5, 0.4)):  # beyond 8 px: a 5×5 alias blur
        np.testing.assert_allclose(disk_kernel(radius, alias).numpy(), reference.disk(radius, alias), atol=1e-9)
    for n, pad in ((5, 2), (4, 9), (1, 3)):  # reflect-101 repeats for pads longer than the axis
        np.testing.assert_array_equal(_border_index(n, pad).numpy(), np.pad(np.arange(n), pad, mode="reflect"))
    # motion blur reads its taps where ImageMagick does, at any angle, with edge pixels beyond the border
    suite = Suite(params={"motion_blur": ((6, 3),) * 5})
    angles = torch.tensor([-45.0, -30.0, 0.0, 12.5, 44.9])
    images = tiles[:5]
    expected = torch.from_numpy(
        np.stack([reference.motion_blur(im, 6, 3, float(a)) for im, a in zip(as_images(images), angles, strict=True)])
    ).permute(0, 3, 1, 2)
    assert torch.equal(suite.apply("motion_blur", images, 1, angles), expected)


def test_gaussian_noise_has_the_configured_spread(suite):
    grey = torch.full((8, 3, 28, 28), 128, dtype=torch.uint8)  # mid-grey: no clipping
    for severity in (1, 3):
        noise = suite.corrupt(grey, "gaussian_noise", severity).float().sub(128).div(255)
        assert noise.mean().abs() < 0.01 and noise.std() == pytest.approx(suite.param("gaussian_noise", severity), rel=0.05)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"params": {"fog": [1, 2, 3, 4, 5]}}, "unknown corruptions: fog. Choose from stain_shift, brightness_up"),
        ({"params": {"pixelate": [0.5]}, "names": None}, "corruptions.params.pixelate=[0.5] is not a list of 5 parameters"),
        ({"params": {"jpeg_compression": [50, 30, 15.5, 10, 7]}}, "each a JPEG quality, an integer from 1 to 100"),
        ({"params": {"pixelate": [0.8] * 5}, "names": ["fog"]}, "corruptions.names lists fog, not among the configured"),
        ({"params": {"defocus_blur": [3, 4, 5, 6, 7]}}, "each [disk radius >= 0, alias-blur sigma > 0] (px of the tile)"),
        ({"params": {"motion_blur": [[0, 5]] * 5}}, "each [radius > 0, sigma > 0] (px of the tile)"),
        ({"params": {"pixelate": [0.8] * 5}, "names": ["motion_blur"]}, "add their parameters under corruptions.params"),
        ({"params": {"pixelate": [0.8] * 5}, "names": "pixelate"}, "is not a non-empty list of corruption names"),
        ({"params": {"pixelate": [0.8] * 5}, "severities": [0, 1]}, "severities=[0, 1] is not a list of distinct integers"),
        ({"params": {"pixelate": [0.8] * 5}, "seed": -1}, "corruptions.seed=-1 is not a non-negative integer"),
        ({"params": {}, "names": ["pixelate"]}, "none: use corruptions=pathology"),
        ({"params": {"pixelate": [0.8] * 5}, "reference_size": 224}, "reference_size is not a corruption setting (spatial"),
        ({"params": {"pixelate": [0.8] * 5}, "scale": 1, "size": 2}, "corruptions.scale, corruptions.size are not corruption"),
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


def test_results_under_the_earlier_scale_convention_are_not_compared(tmp_path):
    """robustness.json records the convention: a record from before it (224 px-scaled blurs) is refused."""
    from sslpath.reporting.robustness import check_comparable
    from sslpath.results.robustness import CONVENTION

    summary = {"severities": [1, 2, 3, 4, 5], "seed": 0, "num_images": 10}
    now = {"params": {"pixelate": [0.8] * 5}, "summary": summary, "convention": CONVENTION}
    check_comparable([now, dict(now)], [tmp_path / "a", tmp_path / "b"])
    before = {"params": {"pixelate": [0.8] * 5}, "summary": summary, "reference_size": 224}
    with pytest.raises(UserError, match="benchmarked on other corruptions, parameters"):
        check_comparable([now, before], [tmp_path / "a", tmp_path / "b"])
