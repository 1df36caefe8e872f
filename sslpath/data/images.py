"""The one way sslpath opens a user's image file: raster formats only, any mode to RGB uint8 by scaling.

Pillow identifies a file by its content, not its name, and some of its formats run external programs
(EPS and PostScript call Ghostscript) or hold more than pixels. Every image a user hands us (a tile
folder, predict's file or folder) is opened here with Pillow's `formats=` limited to `FORMATS`, so a
file of any other format, whatever its name, is refused as unreadable with that reason, never decoded.

Modes are converted by scaling the pixel values to 0–255, never by clipping them:
- 16-bit grey (`I;16`, `I;16B`, …) and 32-bit integer grey (`I`) with values 0–65535: round(v / 257),
  so 65535 -> 255 and 257 -> 1; a 32-bit integer image with values outside 0–65535 is refused.
- 32-bit float grey (`F`): values must lie in 0–1 (intensities), round(v × 255); others are refused.
- 16-bit-per-channel RGB files: Pillow keeps each channel's high byte (v // 256).
- Everything else (`1`, `L`, `P`, `LA`, `RGBA`, `CMYK`, …) through Pillow's own conversion to RGB;
  an alpha channel is dropped (the colours under it are kept), a palette is expanded.
Only the first frame of a multi-frame file is read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# File suffix -> the Pillow format read for it; a folder scan lists files by these suffixes.
SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
IMAGE_SUFFIXES = frozenset(SUFFIX_FORMATS)
# Any of these is opened whatever the suffix says (a JPEG named .png is still a raster image); nothing else is.
FORMATS = tuple(sorted(set(SUFFIX_FORMATS.values())))
# Default cap on an image's pixels: tiles are small, and a 120-megapixel file would take gigabytes to decode.
MAX_PIXELS = 50_000_000
SIXTEEN_BIT_MAX = 65535  # integer grey modes are read as 16-bit intensities: / 257 maps 0–65535 onto 0–255


class UnreadableImage(ValueError):
    """A file sslpath will not decode: another format than FORMATS, or pixel values of no known scale."""


class TooLargeImage(UnreadableImage):
    """An image with more pixels than the cap: refused before it is decoded."""


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A PNG, JPEG, TIFF or BMP file -> uint8 H×W×3 RGB at its native size (resizing is to_tiles' job).

    Another format is refused (UnreadableImage) without being decoded; so is an image of more than
    `max_pixels` pixels, from its header.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap below decides, with a reason
        try:
            image = Image.open(path, formats=FORMATS)
        except UnidentifiedImageError:
            raise UnreadableImage(
                f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image; sslpath opens no other format (EPS, PDF, "
                "SVG, … are refused whatever their name): convert it to PNG or TIFF"
            ) from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise TooLargeImage(
                f"{width}x{height} pixels is more than the cap of {max_pixels:,} pixels (max_pixels); cut it into tiles first"
            )
        return to_rgb8(image)


def to_rgb8(image: Image.Image) -> np.ndarray:
    """uint8 H×W×3 RGB of any Pillow image, its values scaled (not clipped) as the module docstring states."""
    mode = image.mode
    if mode == "F" or mode == "I" or mode.startswith("I;"):
        values = np.asarray(image)
        top = 1.0 if mode == "F" else SIXTEEN_BIT_MAX
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= top):
            scale = "0–1 intensities" if mode == "F" else f"0–{SIXTEEN_BIT_MAX} (16-bit) intensities"
            raise UnreadableImage(
                f"a {mode} image with values from {low:g} to {high:g}; sslpath reads {mode} images as {scale} and "
                "will not guess another scale: convert it to 8- or 16-bit PNG/TIFF"
            )
        grey = np.rint(values.astype(np.float64) * (255 / top)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P":
        image = image.convert("RGBA")  # a palette's transparency is resolved first (Pillow warns otherwise)
    return np.array(image.convert("RGB"))
