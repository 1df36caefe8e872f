"""MedMNIST-C corruptions of H&E test tiles, batched on tensors (the benchmark: sslpath.evaluation.benchmark).

MedMNIST-C (Di Salvo, Doerrich & Ledig 2024, arXiv 2406.17536; code: the medmnistc-api repository)
corrupts MedMNIST test sets at five severities, after ImageNet-C (Hendrycks & Dietterich 2019). Its
package runs image by image through PIL, scikit-image, OpenCV and ImageMagick (MagickWand, not on this
project's machines); here each corruption is re-implemented on tensors, batched on the evaluation
device, to the reference operation's arithmetic: Pillow's BOX resampling and blend, OpenCV's disk
filter, ImageMagick's motion blur, scikit-image's HSV, and the reference's final rounding (most of
them truncate to uint8, ImageMagick rounds). tests/test_corruptions.py checks each against the reference.

Scale convention (one for every corruption): a parameter acts on the pixels of the tile it is given,
as MedMNIST-C's code applies it to whatever image it receives. MedMNIST-C published PathMNIST results
at 224 px only; on 28 px tiles the same blur radius or JPEG block covers 8× more tissue, so accuracies
are comparable with MedMNIST-C's code run at the tile's size, not with its published 224 px numbers.
docs/robustness/corruption_strength.md tabulates each corruption's mean pixel change per severity.

Each corruption works on grey levels (uint8 -> float in [0, 255] -> corrupt -> uint8), so severity 0
returns the images themselves. Randomness (noise, motion angle, stain-shift direction) is drawn per
image from a generator seeded by (seed, corruption, image index): the same at every severity (a
higher severity scales the same draw), independent of batch size and device, and the same for every
model benchmarked.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf

from sslpath.core.errors import UserError
from sslpath.data.stain import jitter_stains

MAX_SEVERITY = 5  # MedMNIST-C and ImageNet-C: five severities per corruption
SETTINGS = ("params", "names", "severities", "seed")  # the keys of a corruptions config
PIL_PRECISION_BITS = 22  # Pillow's 8-bit resampling: fixed-point weights with 32 - 8 - 2 fractional bits

Apply = Callable[[torch.Tensor, Any, Any], torch.Tensor]  # (float64 grey levels N×3×H×W in [0, 255], parameter, draws)
Draw = Callable[[torch.Generator, torch.Size], torch.Tensor]  # one image's random variables


# ----------------------------------------------------------------------------------------------
# The corruptions: float64 grey levels N×3×H×W in [0, 255] (the references' numpy precision) -> grey levels
# (clipped and converted to uint8 by the caller)


def brightness(g: torch.Tensor, factor: float, _draws: Any) -> torch.Tensor:
    """PIL ImageEnhance.Brightness, as MedMNIST-C: a blend with black, in float32 as Pillow's blend."""
    return (g.float() * factor).to(g.dtype)


def contrast(g: torch.Tensor, factor: float, _draws: Any) -> torch.Tensor:
    """PIL ImageEnhance.Contrast, as MedMNIST-C: a blend with the image's mean grey level, which Pillow
    takes from its integer luma (ITU-R 601-2, 16-bit fixed point) and rounds to an integer."""
    levels = g.round().to(torch.int64)
    luma = (levels[:, 0] * 19595 + levels[:, 1] * 38470 + levels[:, 2] * 7471 + 0x8000) >> 16
    mean = (luma.double().mean((1, 2)) + 0.5).floor().float().view(-1, 1, 1, 1)
    return (mean + factor * (g.float() - mean)).to(g.dtype)  # float32, as Pillow's blend


def saturate(g: torch.Tensor, shift: float, _draws: Any) -> torch.Tensor:
    """MedMNIST-C's Saturate: HSV saturation + shift, clipped to [0, 1], in scikit-image's rgb2hsv and
    hsv2rgb arithmetic (where several channels are the maximum, the last decides the hue, as there)."""
    x = g / 255
    r, gr, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    flat = delta == 0
    safe = torch.where(flat, torch.ones_like(delta), delta)
    hue = torch.where(b == v, 4 + (r - gr) / safe, torch.where(gr == v, 2 + (b - r) / safe, (gr - b) / safe))
    hue = torch.where(flat, torch.zeros_like(hue), torch.remainder(hue / 6, 1.0))
    sat = (torch.where(flat, torch.zeros_like(delta), delta / v) + shift).clamp(0, 1)
    sector = torch.floor(hue * 6)
    f = hue * 6 - sector
    p, q, t = v * (1 - sat), v * (1 - f * sat), v * (1 - (1 - f) * sat)
    choices = torch.stack(
        [torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    )  # 6×N×3×H×W
    index = (sector.long() % 6).unsqueeze(1).expand(-1, 3, -1, -1).unsqueeze(0)
    return torch.gather(choices, 0, index).squeeze(0).clamp(0, 1) * 255


def stain_shift(g: torch.Tensor, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """HED stain shift: Tellez et al.'s HED jitter at a fixed magnitude m (scikit-image rgb2hed units,
    sslpath.data.stain): each stain density s becomes (1 ± m)·s ± m, the signs drawn per image and stain."""
    n = g.shape[0]
    scale = 1 + magnitude * signs[:, 0].view(n, 3, 1, 1)
    return jitter_stains(g / 255, scale, magnitude * signs[:, 1].view(n, 3, 1, 1)) * 255


def gaussian_noise(g: torch.Tensor, std: float, noise: torch.Tensor) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation `std` (of the [0, 1] range; MedMNIST-C's GaussianNoise)."""
    return g + 255 * std * noise


def pixelate(g: torch.Tensor, factor: float, _draws: Any) -> torch.Tensor:
    """MedMNIST-C's Pixelate: Pillow BOX resize to int(factor × size), then BOX back up."""
    h, w = g.shape[-2:]
    return pil_box_resize(pil_box_resize(g, (max(1, int(h * factor)), max(1, int(w * factor)))), (h, w))


def jpeg_compression(g: torch.Tensor, quality: int, _draws: Any) -> torch.Tensor:
    """A JPEG round trip at `quality` (libjpeg through torchvision, on the CPU, image by image), as PIL's."""
    from torchvision.io import decode_jpeg, encode_jpeg

    images = g.round().clamp(0, 255).to(torch.uint8).cpu()
    decoded = decode_jpeg(encode_jpeg(list(images), quality=int(quality)))
    return torch.stack(decoded).to(g.device, g.dtype)


def defocus_blur(g: torch.Tensor, radius_alias: Sequence[float], _draws: Any) -> torch.Tensor:
    """MedMNIST-C's DefocusBlur: OpenCV's filter2D (correlation, anchor at the centre, reflect-101
    borders) with its `disk` kernel."""
    kernel = disk_kernel(*radius_alias).to(g)
    (n, c, h, w), size = g.shape, kernel.shape[-1]
    rows, cols = (_border_index(length, size // 2)[: length + size - 1].to(g.device) for length in (h, w))
    padded = g[:, :, rows][:, :, :, cols]
    return F.conv2d(padded.reshape(n * c, 1, *padded.shape[-2:]), kernel[None, None]).view(n, c, h, w)


def motion_blur(g: torch.Tensor, radius_sigma: Sequence[float], angles: torch.Tensor) -> torch.Tensor:
    """MedMNIST-C's MotionBlur, ImageMagick's MotionBlurImage at a random angle θ in ±45° per image:
    2⌈radius⌉ + 1 taps weighted exp(-i²/2σ²) (normalised), tap i read at the pixel offset
    (⌈i·cos θ − ½⌉, ⌈i·sin θ − ½⌉), edge pixels repeated beyond the border."""
    radius, sigma = radius_sigma
    taps = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights /= weights.sum()
    theta = torch.deg2rad(angles.double().cpu()).view(-1, 1)
    dx = torch.ceil(taps * theta.cos() - 0.5).long().to(g.device)  # N×T
    dy = torch.ceil(taps * theta.sin() - 0.5).long().to(g.device)
    n, c, h, w = g.shape
    image = torch.arange(n, device=g.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=g.device).view(1, c, 1, 1)
    ys, xs = torch.arange(h, device=g.device), torch.arange(w, device=g.device)
    out = torch.zeros_like(g)
    for i, weight in enumerate(weights.tolist()):
        rows = (ys + dy[:, i : i + 1]).clamp(0, h - 1).view(n, 1, h, 1)
        cols = (xs + dx[:, i : i + 1]).clamp(0, w - 1).view(n, 1, 1, w)
        out += weight * g[image, channel, rows, cols]
    return out


# ----------------------------------------------------------------------------------------------
# The reference libraries' kernels and resampling


def disk_kernel(radius: float, alias_sigma: float) -> torch.Tensor:
    """MedMNIST-C's (ImageNet-C's) `disk`: the pixels within `radius` on a grid of ±8 px (±radius beyond
    8), normalised in float32 as theirs, then OpenCV-Gaussian-blurred (3×3, 5×5 beyond 8 px; σ =
    alias_sigma; reflect-101 borders)."""
    if radius <= 8:
        coords, ksize = torch.arange(-8, 9, dtype=torch.float64), 3
    else:
        coords, ksize = torch.arange(-radius, radius + 1, dtype=torch.float64), 5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    disk = (xx**2 + yy**2 <= radius**2).float()
    disk = (disk / disk.sum()).double()
    gauss = torch.exp(-((torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2) ** 2) / (2 * alias_sigma**2))
    gauss /= gauss.sum()
    n, half = len(coords), ksize // 2
    index = _border_index(n, half)
    padded = disk[index][:, index]
    rows = sum(gauss[i] * padded[i : i + n] for i in range(ksize))
    return sum(gauss[i] * rows[:, i : i + n] for i in range(ksize)).float().double()


def _border_index(n: int, pad: int) -> torch.Tensor:
    """Source indices of a length-n axis padded by `pad` each side as OpenCV's BORDER_REFLECT_101:
    …2 1 | 0 1 2 … n-1 | n-2…, reflected again for a pad longer than the axis."""
    index = torch.arange(-pad, n + pad)
    if n == 1:
        return torch.zeros_like(index)
    period = 2 * (n - 1)
    index = index.remainder(period)
    return torch.where(index >= n, period - index, index)


def _box_coefficients(in_size: int, out_size: int) -> torch.Tensor:
    """Pillow's BOX resampling of one axis (Resample.c's precompute_coeffs + normalize_coeffs_8bpc):
    an out×in matrix of fixed-point weights. A source pixel counts fully when its centre falls in the
    output pixel's box (scaled by max(in/out, 1)), so non-integer shrinks are not area-weighted."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support, ss = 0.5 * filterscale, 1.0 / filterscale
    coefficients = torch.zeros(out_size, in_size, dtype=torch.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        inside = [x for x in range(lo, hi) if -0.5 < (x - center + 0.5) * ss <= 0.5]
        for x in inside:
            coefficients[out, x] = int(0.5 + (1.0 / len(inside)) * (1 << PIL_PRECISION_BITS))
    return coefficients


def pil_box_resize(g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's `Image.resize(size, Image.BOX)` of uint8-valued grey levels: horizontal pass, rounded to
    uint8, then vertical, each in Pillow's fixed-point arithmetic (exact in float64)."""
    h, w = g.shape[-2:]
    half = 1 << (PIL_PRECISION_BITS - 1)

    def rounded(x: torch.Tensor) -> torch.Tensor:
        return torch.div(x + half, 1 << PIL_PRECISION_BITS, rounding_mode="floor").clamp(0, 255)

    x = g.double()
    if size[1] != w:
        x = rounded(x @ _box_coefficients(w, size[1]).to(x.device).T)
    if size[0] != h:
        x = rounded(torch.einsum("oh,nchw->ncow", _box_coefficients(h, size[0]).to(x.device), x))
    return x.to(g.dtype)


def quantize(g: torch.Tensor, truncate: bool) -> torch.Tensor:
    """Grey levels -> uint8 as the reference stores them: clipped, then truncated (numpy's astype, Pillow's
    blend) or rounded (ImageMagick; JPEG and resampling are integers already)."""
    g = g.clamp(0, 255)
    return (g.floor() if truncate else g.round()).to(torch.uint8)


# ----------------------------------------------------------------------------------------------
# Registry: what each corruption's parameter must be, and what it draws per image


MAX_EXTENT_PX = 1024  # data.size's upper limit (sslpath.checks.validate)


def _number(lo: float, hi: float = math.inf, lo_open: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        is_number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return is_number and (v > lo if lo_open else v >= lo) and v <= hi

    return check


def _pair(first: Callable[[Any], bool], second: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and first(v[0]) and second(v[1])


@dataclass(frozen=True)
class Corruption:
    apply: Apply
    check: Callable[[Any], bool]
    expects: str  # what check accepts, for the error message
    draw: Draw | None = None
    truncate: bool = True  # the reference's uint8 conversion: truncation (numpy astype, Pillow blend) or rounding
    extent: Callable[[Any], float] | None = None  # a spatial parameter's reach in px of the tile


CORRUPTIONS: dict[str, Corruption] = {
    "stain_shift": Corruption(
        stain_shift,
        _number(0, 1, lo_open=False),
        "a stain-density change in [0, 1] (scikit-image rgb2hed units)",
        lambda gen, shape: torch.randint(0, 2, (2, 3), generator=gen).double() * 2 - 1,
    ),
    "brightness_up": Corruption(brightness, _number(0, lo_open=True), "a brightness factor > 0"),
    "brightness_down": Corruption(brightness, _number(0, lo_open=True), "a brightness factor > 0"),
    "contrast_up": Corruption(contrast, _number(0), "a contrast factor >= 0"),
    "contrast_down": Corruption(contrast, _number(0), "a contrast factor >= 0"),
    "saturate": Corruption(saturate, _number(-1, 1), "a saturation shift in [-1, 1]"),
    "defocus_blur": Corruption(
        defocus_blur,
        _pair(_number(0), _number(0, lo_open=True)),
        "[disk radius >= 0, alias-blur sigma > 0] (px of the tile)",
        extent=lambda radius_sigma: radius_sigma[0],
    ),
    "motion_blur": Corruption(
        motion_blur,
        _pair(_number(0, lo_open=True), _number(0, lo_open=True)),
        "[radius > 0, sigma > 0] (px of the tile)",
        lambda gen, shape: torch.empty(()).uniform_(-45, 45, generator=gen),
        truncate=False,  # ImageMagick rounds to its quantum
        extent=lambda radius_sigma: radius_sigma[0],
    ),
    "pixelate": Corruption(pixelate, _number(0, 1, lo_open=True), "a resize factor in (0, 1]", truncate=False),
    "jpeg_compression": Corruption(
        jpeg_compression,
        lambda v: type(v) is int and 1 <= v <= 100,
        "a JPEG quality, an integer from 1 to 100",
        truncate=False,
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
        corruption = CORRUPTIONS[name]
        with torch.autocast(device_type=images.device.type, enabled=False):
            out = corruption.apply(images.double(), self.param(name, severity), draws)
        return quantize(out, corruption.truncate)

    def corrupt(self, images: torch.Tensor, name: str, severity: int, first_index: int = 0) -> torch.Tensor:
        """uint8 N×3×H×W images (split indices first_index…) under `name` at `severity`."""
        return self.apply(name, images, severity, None if severity == 0 else self.draws(name, images, first_index))


def load_suite(cfg: Mapping[str, Any] | None, option: str = "corruptions") -> Suite | None:
    """The suite a `corruptions` config describes, checked; None when it lists no corruption."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = dict(cfg or {})
    unknown = sorted(str(key) for key in cfg if key not in SETTINGS)
    if unknown:
        why = " (spatial parameters act on the tile's own pixels, as MedMNIST-C's; nothing rescales them)"
        keys = ", ".join(f"{option}.{key}" for key in unknown)
        raise UserError(
            f"{keys} {'is not a corruption setting' if len(unknown) == 1 else 'are not corruption settings'}"
            f"{why if 'reference_size' in unknown else ''}; remove {'it' if len(unknown) == 1 else 'them'}. The settings "
            f"are {', '.join(SETTINGS)} (conf/corruptions/pathology.yaml)."
        )
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
    seed = cfg.get("seed", 0)
    if type(seed) is not int or seed < 0:
        raise UserError(f"{option}.seed={seed!r} is not a non-negative integer.")
    for name, values in params.items():
        extent = CORRUPTIONS[name].extent
        if extent is not None and max(map(extent, values)) > MAX_EXTENT_PX:
            # the kernel grows with the square of the radius: a blur past any tile is all cost and no picture
            raise UserError(
                f"{option}.params.{name}={values!r} reaches {max(map(extent, values)):g} px, wider than the largest "
                f"tile sslpath trains on ({MAX_EXTENT_PX} px, data.size's limit): use radii of at most {MAX_EXTENT_PX}."
            )
    return Suite(params={n: tuple(v) for n, v in params.items()}, severities=tuple(sorted(severities)), seed=seed)
