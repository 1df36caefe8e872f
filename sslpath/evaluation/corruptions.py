"""MedMNIST-C-style corruptions of H&E test tiles, batched on tensors, and the robustness benchmark.

MedMNIST-C (Di Salvo, Doerrich & Ledig 2024, arXiv 2406.17536; code: the medmnistc-api repository)
corrupts MedMNIST test sets at five severities, after ImageNet-C (Hendrycks & Dietterich 2019). Its
package runs image by image through PIL, OpenCV and ImageMagick's native MagickWand library (not on
this project's machines), and only at 224 px; so the corruptions are re-implemented here on tensors,
batched on the evaluation device, with MedMNIST-C's PathMNIST parameters (conf/corruptions/pathology.yaml
lists them with their sources). Spatial parameters (blur radii, motion length) are in pixels of
MedMNIST-C's 224 px tiles and scale with the tile size, so a blur covers the same tissue at 28 px.

Each corruption is uint8 -> float -> corrupt -> rounded uint8, so severity 0 returns the images
themselves. Randomness (noise, motion angle, stain-shift direction) is drawn per image from a
generator seeded by (seed, corruption, image index): the same at every severity (a higher severity
scales the same draw), independent of batch size and device, and the same for every model benchmarked.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sslpath.core.errors import UserError
from sslpath.data.stain import jitter_stains

MAX_SEVERITY = 5  # MedMNIST-C and ImageNet-C: five severities per corruption
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's RGB -> L, the grey that ImageEnhance.Contrast pulls towards

Apply = Callable[[torch.Tensor, Any, Any, float], torch.Tensor]  # (x in [0, 1], parameter, draws, spatial scale)
Draw = Callable[[torch.Generator, torch.Size], torch.Tensor]  # one image's random variables


# ----------------------------------------------------------------------------------------------
# The corruptions: float batches N×3×H×W in [0, 1] -> float (clamped and rounded by the caller)


def brightness(x: torch.Tensor, factor: float, _draws: Any, _scale: float) -> torch.Tensor:
    """PIL ImageEnhance.Brightness, as MedMNIST-C: a blend with black."""
    return x * factor


def contrast(x: torch.Tensor, factor: float, _draws: Any, _scale: float) -> torch.Tensor:
    """PIL ImageEnhance.Contrast, as MedMNIST-C: a blend with the image's mean grey level."""
    grey = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    return grey + factor * (x - grey)


def saturate(x: torch.Tensor, shift: float, _draws: Any, _scale: float) -> torch.Tensor:
    """MedMNIST-C's Saturate: HSV saturation + shift, clipped to [0, 1]."""
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    h, s, v = rgb_to_hsv(x).unbind(1)
    return hsv_to_rgb(torch.stack([h, (s + shift).clamp(0, 1), v], dim=1))


def stain_shift(x: torch.Tensor, magnitude: float, signs: torch.Tensor, _scale: float) -> torch.Tensor:
    """HED stain shift (Tellez et al. 2019's HED jitter at a fixed magnitude): each stain density s
    becomes (1 ± m)·s ± m, the signs drawn per image and stain."""
    n = x.shape[0]
    return jitter_stains(x, 1 + magnitude * signs[:, 0].view(n, 3, 1, 1), magnitude * signs[:, 1].view(n, 3, 1, 1))


def gaussian_noise(x: torch.Tensor, std: float, noise: torch.Tensor, _scale: float) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation `std` (MedMNIST-C's GaussianNoise)."""
    return x + std * noise


def pixelate(x: torch.Tensor, factor: float, _draws: Any, _scale: float) -> torch.Tensor:
    """MedMNIST-C's Pixelate: box-downsample to `factor` of the size, then back up (nearest)."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * factor)), max(1, int(w * factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def jpeg_compression(x: torch.Tensor, quality: int, _draws: Any, _scale: float) -> torch.Tensor:
    """A JPEG round trip at `quality` (libjpeg through torchvision, on the CPU, image by image)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    images = to_uint8(x).cpu()
    decoded = decode_jpeg(encode_jpeg(list(images), quality=int(quality)))
    return torch.stack(decoded).to(x.device).float().div_(255)


def defocus_blur(x: torch.Tensor, radius: float, _draws: Any, scale: float) -> torch.Tensor:
    """MedMNIST-C's DefocusBlur: convolution with a disk of `radius` px (at the reference size).

    The disk is sampled finely and splatted bilinearly onto the pixel grid, so it stays anti-aliased
    and grows smoothly below a pixel (MedMNIST-C's extra alias blur, σ 0.1-0.3 px at 224 px, is far
    below a pixel at 28 px and is left out)."""
    r = radius * scale
    steps = max(33, 2 * math.ceil(8 * r) + 1)
    grid = torch.linspace(-r, r, steps, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    inside = xx**2 + yy**2 <= r**2 + 1e-12
    points = torch.stack([xx[inside], yy[inside]], dim=-1)[None]
    return convolve(x, splat(points, torch.ones(points.shape[:2], dtype=torch.float64)))


def motion_blur(x: torch.Tensor, radius_sigma: Sequence[float], angles: torch.Tensor, scale: float) -> torch.Tensor:
    """MedMNIST-C's MotionBlur (ImageMagick's -motion-blur radius x sigma at a random angle in ±45°):
    a one-sided Gaussian streak of 2⌈radius⌉ + 1 taps, weights exp(-i²/2σ²), along each image's angle."""
    radius, sigma = radius_sigma
    taps = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    theta = torch.deg2rad(angles.double().cpu()).view(-1, 1)
    points = torch.stack([taps * scale * theta.cos(), taps * scale * theta.sin()], dim=-1)  # N×T×2
    weights = torch.exp(-(taps**2) / (2 * sigma**2)).expand(len(theta), -1)
    return convolve(x, splat(points, weights))


def splat(points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """B×P×2 (x, y) pixel offsets with B×P weights -> B×S×S kernels (S odd, centred, summing to 1),
    each point's weight shared bilinearly among its four nearest pixels."""
    points, weights = points.double(), weights.double()
    half = int(points.abs().max().floor()) + 1
    size = 2 * half + 1
    pos = points + half
    base = pos.floor()
    frac = pos - base
    base = base.long()
    kernels = torch.zeros(points.shape[0], size * size, dtype=torch.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            share = (frac[..., 0] if dx else 1 - frac[..., 0]) * (frac[..., 1] if dy else 1 - frac[..., 1])
            kernels.scatter_add_(1, (base[..., 1] + dy) * size + base[..., 0] + dx, weights * share)
    return (kernels / kernels.sum(1, keepdim=True)).view(-1, size, size)


def convolve(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each image's channels convolved with its kernel (B = 1: one kernel for all), edges replicated."""
    n, c, h, w = x.shape
    half = kernels.shape[-1] // 2
    weight = kernels.to(x).expand(n, -1, -1).repeat_interleave(c, dim=0).unsqueeze(1)  # (N·C)×1×S×S
    padded = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="replicate")
    return F.conv2d(padded, weight, groups=n * c).view(n, c, h, w)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round_().to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Registry: what each corruption's parameter must be, and what it draws per image


def _number(lo: float, hi: float = math.inf, lo_open: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        is_number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return is_number and (v > lo if lo_open else v >= lo) and v <= hi

    return check


@dataclass(frozen=True)
class Corruption:
    apply: Apply
    check: Callable[[Any], bool]
    expects: str  # what check accepts, for the error message
    draw: Draw | None = None
    extent: Callable[[Any], float] | None = None  # a spatial parameter's reach in px at reference_size


CORRUPTIONS: dict[str, Corruption] = {
    "stain_shift": Corruption(
        stain_shift,
        _number(0, 1, lo_open=False),
        "a stain-density change in [0, 1]",
        lambda gen, shape: torch.randint(0, 2, (2, 3), generator=gen).double() * 2 - 1,
    ),
    "brightness_up": Corruption(brightness, _number(0, lo_open=True), "a brightness factor > 0"),
    "brightness_down": Corruption(brightness, _number(0, lo_open=True), "a brightness factor > 0"),
    "contrast_up": Corruption(contrast, _number(0), "a contrast factor >= 0"),
    "contrast_down": Corruption(contrast, _number(0), "a contrast factor >= 0"),
    "saturate": Corruption(saturate, _number(-1, 1), "a saturation shift in [-1, 1]"),
    "defocus_blur": Corruption(
        defocus_blur, _number(0), "a disk radius >= 0 (px at reference_size)", extent=lambda radius: radius
    ),
    "motion_blur": Corruption(
        motion_blur,
        lambda v: isinstance(v, Sequence) and len(v) == 2 and _number(0)(v[0]) and _number(0, lo_open=True)(v[1]),
        "[radius >= 0, sigma > 0] (px at reference_size)",
        lambda gen, shape: torch.empty(()).uniform_(-45, 45, generator=gen),
        extent=lambda radius_sigma: radius_sigma[0],
    ),
    "pixelate": Corruption(pixelate, _number(0, 1, lo_open=True), "a resize factor in (0, 1]"),
    "jpeg_compression": Corruption(
        jpeg_compression, lambda v: type(v) is int and 1 <= v <= 100, "a JPEG quality, an integer from 1 to 100"
    ),
    "gaussian_noise": Corruption(
        gaussian_noise, _number(0), "a noise standard deviation >= 0", lambda gen, shape: torch.randn(shape, generator=gen)
    ),
}


# ----------------------------------------------------------------------------------------------
# A configured suite: which corruptions, their parameter per severity, the seed


@dataclass(frozen=True)
class Suite:
    """The corruptions of conf/corruptions/<option>.yaml, checked."""

    params: dict[str, tuple[Any, ...]]  # name -> parameter at severities 1..MAX_SEVERITY
    severities: tuple[int, ...] = tuple(range(1, MAX_SEVERITY + 1))
    seed: int = 0
    reference_size: int = 224

    @property
    def names(self) -> list[str]:
        return list(self.params)

    def param(self, name: str, severity: int) -> Any:
        return self.params[name][severity - 1]

    def draws(self, name: str, images: torch.Tensor, first_index: int = 0) -> torch.Tensor | None:
        """Per-image random variables of `name` for images[i] = split image first_index + i."""
        draw = CORRUPTIONS[name].draw
        if draw is None:
            return None
        gen, crc = torch.Generator(), zlib.crc32(name.encode())
        out = []
        for i in range(images.shape[0]):
            gen.manual_seed(((self.seed * 1_000_003 + crc) * 1_000_000_007 + first_index + i) % 2**63)
            out.append(draw(gen, images.shape[1:]))
        return torch.stack(out).to(images.device)

    def apply(self, name: str, images: torch.Tensor, severity: int, draws: torch.Tensor | None) -> torch.Tensor:
        """uint8 images at this severity; severity 0 returns them unchanged."""
        if severity == 0:
            return images
        scale = images.shape[-1] / self.reference_size
        with torch.autocast(device_type=images.device.type, enabled=False):
            out = CORRUPTIONS[name].apply(images.float().div(255), self.param(name, severity), draws, scale)
        return to_uint8(out)

    def corrupt(self, images: torch.Tensor, name: str, severity: int, first_index: int = 0) -> torch.Tensor:
        """uint8 N×3×H×W images (split indices first_index…) under `name` at `severity`."""
        return self.apply(name, images, severity, None if severity == 0 else self.draws(name, images, first_index))


def load_suite(cfg: Mapping[str, Any] | None, option: str = "corruptions") -> Suite | None:
    """The suite a `corruptions` config describes, checked; None when it lists no corruption."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = dict(cfg or {})
    params = cfg.get("params") or {}
    names = cfg.get("names")
    if not params and not names:
        return None
    fix = f"Choose from {', '.join(CORRUPTIONS)} (conf/corruptions/pathology.yaml lists their parameters)."
    if not isinstance(params, dict):
        raise UserError(f"{option}.params={params!r} is not a mapping of corruption name -> parameters per severity. {fix}")
    unknown = [str(n) for n in params if n not in CORRUPTIONS]
    if unknown:
        raise UserError(f"{option}.params names unknown corruptions: {', '.join(unknown)}. {fix}")
    if names is not None:
        if isinstance(names, str) or not isinstance(names, list) or not names:
            raise UserError(f"{option}.names={names!r} is not a non-empty list of corruption names, or null for all. {fix}")
        missing = [str(n) for n in names if n not in params]
        if missing:
            where = "known" if all(n in CORRUPTIONS for n in missing) else "unknown"
            hint = f"add their parameters under {option}.params" if where == "known" else fix
            raise UserError(
                f"{option}.names lists {', '.join(missing)}, not among the configured corruptions "
                f"({', '.join(params) or 'none: use corruptions=pathology'}): {hint}"
            )
        params = {n: params[n] for n in dict.fromkeys(names)}
    for name, values in params.items():
        corruption = CORRUPTIONS[name]
        if not isinstance(values, list) or len(values) != MAX_SEVERITY or not all(map(corruption.check, values)):
            raise UserError(
                f"{option}.params.{name}={values!r} is not a list of {MAX_SEVERITY} parameters (severities 1 to "
                f"{MAX_SEVERITY}), each {corruption.expects}."
            )
    severities = cfg.get("severities", list(range(1, MAX_SEVERITY + 1)))
    if (
        not isinstance(severities, list)
        or not severities
        or not all(type(s) is int and 1 <= s <= MAX_SEVERITY for s in severities)
        or len(set(severities)) != len(severities)
    ):
        raise UserError(f"{option}.severities={severities!r} is not a list of distinct integers from 1 to {MAX_SEVERITY}.")
    seed, size = cfg.get("seed", 0), cfg.get("reference_size", 224)
    if type(seed) is not int or seed < 0:
        raise UserError(f"{option}.seed={seed!r} is not a non-negative integer.")
    if type(size) is not int or size < 1:
        raise UserError(f"{option}.reference_size={size!r} is not a positive integer (MedMNIST-C's tiles: 224).")
    for name, values in params.items():
        extent = CORRUPTIONS[name].extent
        if extent is not None and max(map(extent, values)) > size:
            # the kernel grows with the square of the radius: a blur past the tile is all cost and no picture
            raise UserError(
                f"{option}.params.{name}={values!r} reaches {max(map(extent, values)):g} px, wider than the whole "
                f"{size} px reference tile ({option}.reference_size): use radii of at most {size}."
            )
    return Suite(
        params={n: tuple(v) for n, v in params.items()},
        severities=tuple(sorted(severities)),
        seed=seed,
        reference_size=size,
    )


# ----------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Robustness:
    """Accuracy and AUC of one model on the clean split and under each corruption × severity."""

    clean: dict[str, Any]  # classification_results of the clean split
    results: dict[str, dict[int, dict[str, Any]]]  # corruption -> severity -> classification_results
    suite: Suite
    num_images: int

    def rows(self) -> list[dict[str, Any]]:
        """Long table: the clean split (severity 0), then each corruption × severity."""
        rows = [self._row("clean", 0, None, self.clean)]
        for name, by_severity in self.results.items():
            rows += [self._row(name, s, self.suite.param(name, s), r) for s, r in by_severity.items()]
        return rows

    def _row(self, name: str, severity: int, param: Any, result: dict[str, Any]) -> dict[str, Any]:
        acc = result["test_acc"]
        return {
            "corruption": name,
            "severity": severity,
            "param": param,
            "acc": acc,
            "auc": result["test_auc"],
            "loss": result["test_loss"],
            "relative_drop": relative_drop(self.clean["test_acc"], acc),
        }

    def summary(self) -> dict[str, Any]:
        """Mean corruption accuracy and AUC over every corruption and severity, and the drop from clean."""
        accs = [r["test_acc"] for by in self.results.values() for r in by.values()]
        aucs = [r["test_auc"] for by in self.results.values() for r in by.values() if r["test_auc"] is not None]
        mca = sum(accs) / len(accs)
        return {
            "clean_acc": self.clean["test_acc"],
            "clean_auc": self.clean["test_auc"],
            "mean_corruption_acc": mca,
            "mean_corruption_auc": sum(aucs) / len(aucs) if aucs else None,
            "relative_drop": relative_drop(self.clean["test_acc"], mca),
            "corruptions": self.suite.names,
            "severities": list(self.suite.severities),
            "seed": self.suite.seed,
            "num_images": self.num_images,
        }


def relative_drop(clean: float, acc: float) -> float | None:
    """(clean − corrupted) / clean accuracy: the share of the clean accuracy a corruption costs."""
    return (clean - acc) / clean if clean > 0 else None


def benchmark(
    suite: Suite,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    predict: Callable[[torch.Tensor], torch.Tensor],
    clean_logits: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> Robustness:
    """Every corruption × severity of the uint8 split `images`, batch by batch on `device`.

    `predict` maps a uint8 batch to logits exactly as the clean evaluation did (severity 0 would give
    `clean_logits` bit for bit). Each batch's random draws are made once and shared by its severities.
    """
    from sslpath.results.metrics import classification_results

    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in suite.names:
        logits: dict[int, list[torch.Tensor]] = {s: [] for s in suite.severities}
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            draws = suite.draws(name, batch, start)
            for severity in suite.severities:
                logits[severity].append(predict(suite.apply(name, batch, severity, draws)))
        results[name] = {s: classification_results(torch.cat(parts), labels, class_names) for s, parts in logits.items()}
    clean = classification_results(clean_logits, labels, class_names)
    return Robustness(clean=clean, results=results, suite=suite, num_images=len(images))
