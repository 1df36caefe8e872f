"""Reference operations, image by image in numpy, Pillow, SciPy and scikit-image, written from the
reference code's own arithmetic: MedMNIST-C's PathMNIST corruptions (medmnistc-api,
medmnistc/corruptions/*.py) and Tellez et al.'s HED augmenter (DIAGNijmegen's HedColorAugmenter on
scikit-image's rgb2hed). OpenCV and ImageMagick are not installed here, so their two kernels are
written out: `disk` + cv2.filter2D (reflect-101 borders) and MagickMotionBlurImage (edge pixels,
rounded to the quantum). Tests compare sslpath.data.corruptions and sslpath.data.stain with these; the
strength table (scripts/corruption_strength.py) lists their mean pixel change beside ours.

Random draws (noise, motion angle, HED factors) are arguments, so a test can hand the reference the
very draws sslpath made.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageEnhance
from scipy import ndimage
from skimage.color import hed2rgb, hsv2rgb, rgb2hed, rgb2hsv

# MedMNIST-C's CORRUPTIONS_DS['pathmnist'] (registry.py), the ones sslpath implements.
PATHMNIST = {
    "pixelate": [0.8, 0.6, 0.40, 0.30, 0.25],
    "jpeg_compression": [50, 30, 15, 10, 7],
    "defocus_blur": [(3, 0.1), (4, 0.1), (5, 0.2), (6, 0.2), (7, 0.3)],
    "motion_blur": [(5, 5), (10, 5), (15, 5), (15, 8), (15, 12)],
    "brightness_up": [1.1, 1.15, 1.2, 1.22, 1.25],
    "brightness_down": [0.85, 0.80, 0.75, 0.72, 0.70],
    "contrast_up": [1.1, 1.2, 1.3, 1.4, 1.6],
    "contrast_down": [0.8, 0.7, 0.6, 0.55, 0.5],
    "saturate": [0.05, 0.10, 0.15, 0.20, 0.25],
}
GAUSSIAN_NOISE_DERMAMNIST = [0.04, 0.08, 0.12, 0.18, 0.26]  # MedMNIST-C's DermaMNIST (RGB) noise


def pixelate(img: np.ndarray, factor: float) -> np.ndarray:
    pil = Image.fromarray(img)
    w, h = pil.size
    small = pil.resize((int(w * factor), int(h * factor)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX))


def jpeg_compression(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(img)).enhance(factor))


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(img)).enhance(factor))


def saturate(img: np.ndarray, shift: float) -> np.ndarray:
    hsv = rgb2hsv(img / 255.0)
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] + shift, 0, 1)
    return (np.clip(hsv2rgb(hsv), 0, 1) * 255).astype(np.uint8)


def gaussian_noise(img: np.ndarray, std: float, noise: np.ndarray) -> np.ndarray:
    """MedMNIST-C's GaussianNoise with `noise` (H×W×3 standard normal) for np.random.normal."""
    return (np.clip(img / 255.0 + std * noise, 0, 1) * 255).astype(np.uint8)


def _cv2_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    x = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """MedMNIST-C's (ImageNet-C's) disk: aliased disk on ±8 px (±radius beyond), cv2.GaussianBlur'd."""
    if radius <= 8:
        coords, ksize = np.arange(-8, 8 + 1), 3
    else:
        coords, ksize = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(coords, coords)
    aliased = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)  # float32, as MedMNIST-C's
    aliased /= aliased.sum()
    g = _cv2_gaussian_kernel(ksize, alias_blur)
    rows = ndimage.correlate1d(aliased.astype(np.float64), g, axis=0, mode="mirror")
    return ndimage.correlate1d(rows, g, axis=1, mode="mirror").astype(np.float32).astype(np.float64)


def defocus_blur(img: np.ndarray, radius: float, alias_blur: float) -> np.ndarray:
    """cv2.filter2D per channel: correlation, anchor at the kernel's centre, BORDER_REFLECT_101."""
    kernel = disk(radius, alias_blur)
    x = img / 255.0
    out = np.stack([ndimage.correlate(x[:, :, c], kernel, mode="mirror") for c in range(3)], axis=-1)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def motion_blur(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """MagickMotionBlurImage: 2⌈radius⌉+1 taps exp(-i²/2σ²) (normalised), tap i read at the pixel
    (x + ⌈i·cos θ − ½⌉, y + ⌈i·sin θ − ½⌉), edge virtual pixels, rounded to the 8-bit PNG it writes."""
    width = int(2 * math.ceil(radius) + 1)
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    px, py = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    out = np.zeros(img.shape, dtype=np.float64)
    for i in range(width):
        dx = math.ceil(i * py / math.hypot(px, py) - 0.5)
        dy = math.ceil(i * px / math.hypot(px, py) - 0.5)
        out += kernel[i] * img[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def hed_jitter(img: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Tellez et al.'s HedColorAugmenter.transform: stains (scikit-image rgb2hed) × α + β per stain,
    hed2rgb, clipped, truncated to uint8. α = 1 + σ for its drawn σ."""
    hed = rgb2hed(img) * alpha + beta
    return (np.clip(hed2rgb(hed), 0, 1) * 255.0).astype(np.uint8)


def apply(name: str, img: np.ndarray, param, draw=None) -> np.ndarray:
    """Reference corruption `name` of one H×W×3 uint8 image at `param`, with sslpath's draw where random."""
    if name == "defocus_blur":
        return defocus_blur(img, *param)
    if name == "motion_blur":
        return motion_blur(img, *param, angle=float(draw))
    if name == "gaussian_noise":
        return gaussian_noise(img, param, draw)
    if name == "stain_shift":
        signs = np.asarray(draw, dtype=np.float64)
        return hed_jitter(img, 1 + param * signs[0], param * signs[1])
    if name.startswith("brightness"):
        return brightness(img, param)
    if name.startswith("contrast"):
        return contrast(img, param)
    return {"pixelate": pixelate, "jpeg_compression": jpeg_compression, "saturate": saturate}[name](img, param)
