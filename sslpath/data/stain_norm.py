"""Stain normalisation: map every tile to a reference stain appearance before the model sees it.

Two methods, batched on float tensors N×3×H×W in [0, 1] on any device, one set of statistics per tile:
- Reinhard et al. 2001 ("Color transfer between images"): in the decorrelated lαβ space (RGB -> LMS ->
  log10 -> lαβ), each channel of a tile is standardised by the tile's mean and std and given the
  reference's. The exact inverses of the paper's forward matrices are used (the paper prints rounded ones).
- Macenko et al. 2009 ("A method for normalizing histology slides for quantitative analysis"), as the
  authors' reference code (mitkovetta/staining-normalization, HEnorm_python, torchstain's numpy path):
  optical density OD = −ln((I + 1)/Io) with Io = 240; tissue pixels are those with OD >= beta = 0.15 in every
  channel; the H and E vectors are the alpha = 1st and 99th percentile angles in the plane of the two main
  eigenvectors of the tissue pixels' OD covariance (the vector with the larger red OD is haematoxylin); the
  concentrations (least squares) are scaled so their 99th percentile is the reference's, and the tile is
  rebuilt with the reference's stain vectors. Unlike the reference code, the output is not rounded to uint8.

Fitting (`fit`) computes the per-tile statistics of the reference tiles (the training split's labelled tiles,
or one reference image) and keeps their median over the tiles with enough tissue: a robust reference that a
few odd tiles do not move. The fitted numbers are a plain `record` (method, min_tissue and the reference
statistics) stored in checkpoint metadata, so training, evaluation, prediction and the corruption benchmark
apply the same normalisation (`StainNormalizer.from_record`, inside `sslpath.data.augment.BatchTransform`).

Background: a tile whose tissue pixels (OD >= beta in every channel, both methods) are fewer than `min_tissue`
of its pixels, or whose statistics are degenerate (a flat channel, a zero stain percentile), is passed through
unchanged rather than stretched to the reference: a white tile stays white and nothing becomes NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sslpath.core.errors import UserError
from sslpath.data.images import read_image

METHODS = ("none", "reinhard", "macenko")
# Macenko's reference code: transmitted light intensity, angle percentile, transparency (OD) threshold.
IO, ALPHA, BETA = 240.0, 1.0, 0.15
MAX_C_PERCENTILE = 99.0  # concentrations are scaled by their 99th percentile (reference code)
# Reinhard et al. 2001, eq. 4 and 6: RGB -> LMS, and log10 LMS -> lαβ.
RGB_TO_LMS = torch.tensor([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]], dtype=torch.float64)
LMS_TO_LAB = torch.diag(torch.tensor([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)], dtype=torch.float64)) @ torch.tensor(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]], dtype=torch.float64
)
LMS_FLOOR = 1 / 255  # LMS below one grey level is floored before the log, so black pixels stay finite
MIN_STD = 1e-4  # a lαβ channel flatter than this (in log10 units) has no contrast to standardise
MIN_MAX_C = 1e-3  # a stain whose 99th percentile concentration is below this is absent from the tile
REFERENCE_MAX_PIXELS = 4_000_000  # a reference is a tile or a small region: its statistics fit in memory at once


def tissue_mask(x: torch.Tensor) -> torch.Tensor:
    """N×P bool: pixels with optical density >= BETA in every channel (Macenko's transparency rule)."""
    od = optical_density(x)
    return (od >= BETA).all(dim=-1)


def optical_density(x: torch.Tensor) -> torch.Tensor:
    """N×3×H×W in [0, 1] -> N×P×3 optical density −ln((I + 1)/Io) on the 0–255 scale, as the reference code."""
    pixels = x.flatten(2).transpose(1, 2) * 255
    return -torch.log((pixels + 1) / IO)


def percentile(values: torch.Tensor, q: float, count: torch.Tensor | None = None) -> torch.Tensor:
    """q-th percentile along the last dim with linear interpolation (numpy's default), per row. With `count`,
    only each row's first `count` values after sorting count (the others must sort last: +inf)."""
    ordered = values.sort(dim=-1).values
    n = torch.full(values.shape[:-1], values.shape[-1], device=values.device) if count is None else count
    pos = (q / 100) * (n - 1).clamp_min(0).to(values.dtype)
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max((n - 1).clamp_min(0))
    frac = pos - lo.to(values.dtype)
    low, high = ordered.gather(-1, lo.unsqueeze(-1)).squeeze(-1), ordered.gather(-1, hi.unsqueeze(-1)).squeeze(-1)
    return low + frac * torch.where(frac > 0, high - low, torch.zeros_like(low))


def _enough_tissue(x: torch.Tensor, min_tissue: float) -> tuple[torch.Tensor, torch.Tensor]:
    mask = tissue_mask(x)
    return mask, mask.float().mean(dim=1) >= max(min_tissue, 1e-12)


# Reinhard ---------------------------------------------------------------------------------------------


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> Reinhard's lαβ (log10 LMS), N×3×H×W."""
    lms = torch.einsum("dc,nchw->ndhw", RGB_TO_LMS.to(x), x).clamp_min(LMS_FLOOR)
    return torch.einsum("dc,nchw->ndhw", LMS_TO_LAB.to(x), lms.log10())


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Reinhard's lαβ -> RGB, clamped to [0, 1] (exact inverse of `rgb_to_lab` above the LMS floor)."""
    lms = torch.pow(10.0, torch.einsum("dc,nchw->ndhw", torch.linalg.inv(LMS_TO_LAB).to(lab), lab))
    return torch.einsum("dc,nchw->ndhw", torch.linalg.inv(RGB_TO_LMS).to(lab), lms).clamp(0, 1)


def reinhard_stats(x: torch.Tensor, min_tissue: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile: lαβ means and stds (N×6, over all its pixels, as the paper) and whether it can be normalised."""
    lab = rgb_to_lab(x).flatten(2)
    stats = torch.cat([lab.mean(dim=2), lab.std(dim=2, correction=0)], dim=1)
    _, enough = _enough_tissue(x, min_tissue)
    return stats, enough & (stats[:, 3:] > MIN_STD).all(dim=1) & stats.isfinite().all(dim=1)


def reinhard(x: torch.Tensor, target: torch.Tensor, min_tissue: float) -> torch.Tensor:
    """Each tile's lαβ channels standardised and given `target`'s means and stds (6 numbers)."""
    stats, ok = reinhard_stats(x, min_tissue)
    mean, std = stats[:, :3, None, None], stats[:, 3:, None, None].clamp_min(MIN_STD)
    target = target.to(x)
    lab = (rgb_to_lab(x) - mean) / std * target[3:, None, None] + target[:3, None, None]
    return torch.where(ok.view(-1, 1, 1, 1), lab_to_rgb(lab), x)


# Macenko ----------------------------------------------------------------------------------------------


def macenko_stats(x: torch.Tensor, min_tissue: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per tile: stain vectors HE (N×3×2, columns H and E), concentrations C (N×2×P), their 99th percentiles
    maxC (N×2), and whether the tile can be normalised (N)."""
    od = optical_density(x)
    mask, enough = _enough_tissue(x, min_tissue)
    count = mask.sum(dim=1)
    weights = mask.to(od.dtype).unsqueeze(-1)
    mean = (od * weights).sum(dim=1, keepdim=True) / count.clamp_min(1).view(-1, 1, 1)
    centred = (od - mean) * weights
    cov = centred.transpose(1, 2) @ centred / (count - 1).clamp_min(1).view(-1, 1, 1)
    eigvecs = torch.linalg.eigh(cov).eigenvectors[:, :, 1:3]  # the two largest eigenvalues' vectors
    projected = od @ eigvecs
    phi = torch.atan2(projected[..., 1], projected[..., 0]).masked_fill(~mask, math.inf)
    count = count.clamp_min(1)
    angles = torch.stack([percentile(phi, ALPHA, count), percentile(phi, 100 - ALPHA, count)], dim=1)  # N×2
    angles = torch.where(angles.isfinite(), angles, torch.zeros_like(angles))  # tiles without tissue: not used
    v = eigvecs @ torch.stack([angles.cos(), angles.sin()], dim=1)  # N×3×2: columns vMin, vMax
    h_first = (v[:, 0, 0] > v[:, 0, 1]).view(-1, 1, 1)
    he = torch.where(h_first, v, v.flip(-1))
    conc = torch.linalg.pinv(he) @ od.transpose(1, 2)  # least squares, N×2×P
    max_c = percentile(conc, MAX_C_PERCENTILE)
    ok = enough & (count >= 2) & (max_c > MIN_MAX_C).all(dim=1) & he.isfinite().all(dim=(1, 2)) & max_c.isfinite().all(dim=1)
    return he, conc, max_c, ok


def macenko(x: torch.Tensor, target_he: torch.Tensor, target_max_c: torch.Tensor, min_tissue: float) -> torch.Tensor:
    """Each tile rebuilt from its stain concentrations, scaled to the reference's, with the reference's vectors."""
    he, conc, max_c, ok = macenko_stats(x, min_tissue)
    conc = conc / max_c.clamp_min(MIN_MAX_C).unsqueeze(-1) * target_max_c.to(x).view(1, 2, 1)
    rebuilt = (IO * torch.exp(-(target_he.to(x) @ conc))).clamp_max(255) / 255  # N×3×P
    return torch.where(ok.view(-1, 1, 1, 1), rebuilt.view_as(x), x)


# Fitting, records, the module -------------------------------------------------------------------------


class NoTissue(ValueError):
    """No reference tile has enough tissue to fit the normalisation to."""


def fit(method: str, images: torch.Tensor, min_tissue: float, batch_size: int) -> dict[str, Any]:
    """The record of `method` fitted to uint8 tiles N×3×H×W: the median of their per-tile statistics over the
    tiles with enough tissue (Macenko's stain vectors renormalised to unit length)."""
    kept: list[torch.Tensor] = []
    for chunk in images.split(batch_size):
        x = chunk.float().div(255) if chunk.dtype == torch.uint8 else chunk.float()
        if method == "reinhard":
            stats, ok = reinhard_stats(x, min_tissue)
        else:
            he, _, max_c, ok = macenko_stats(x, min_tissue)
            stats = torch.cat([he.flatten(1), max_c], dim=1)
        kept.append(stats[ok].double().cpu())
    stats = torch.cat(kept)
    if len(stats) == 0:
        raise NoTissue(f"none of the {len(images)} reference tiles has {min_tissue:.0%} tissue pixels")
    median = stats.median(dim=0).values
    record: dict[str, Any] = {"method": method, "min_tissue": float(min_tissue), "tiles": len(stats)}
    if method == "reinhard":
        return record | {"mean": median[:3].tolist(), "std": median[3:].tolist()}
    he = median[:6].view(3, 2)
    he = he / he.norm(dim=0, keepdim=True)
    return record | {"stain_vectors": he.T.tolist(), "max_concentrations": median[6:].tolist()}


def _numbers(value: Any, count: int, lo: float, hi: float) -> bool:
    return (
        isinstance(value, list)
        and len(value) == count
        and all(type(v) in (int, float) and math.isfinite(v) and lo <= v <= hi for v in value)
    )


RECORD_KEYS = {
    "reinhard": ("method", "min_tissue", "tiles", "mean", "std"),
    "macenko": ("method", "min_tissue", "tiles", "stain_vectors", "max_concentrations"),
}
RECORD_HELP = (
    "null, or {method: reinhard, min_tissue, tiles, mean: 3 numbers, std: 3 positive numbers} or {method: macenko, "
    "min_tissue, tiles, stain_vectors: 2 unit vectors of 3 numbers in [0, 1], max_concentrations: 2 positive numbers}, "
    "min_tissue in [0, 1], tiles a positive integer"
)


def record_problem(record: Any) -> str | None:
    """None if `record` is a well-formed stain normalisation record (or None), else what is wrong."""
    if record is None:
        return None
    if not isinstance(record, Mapping) or record.get("method") not in RECORD_KEYS:
        return "not a mapping with method reinhard or macenko"
    method = record["method"]
    if set(record) != set(RECORD_KEYS[method]):
        return f"keys {sorted(map(str, record))}, not {list(RECORD_KEYS[method])}"
    tissue, tiles = record["min_tissue"], record["tiles"]
    if type(tissue) not in (int, float) or not 0 <= tissue <= 1 or type(tiles) is not int or tiles < 1:
        return "min_tissue outside [0, 1] or tiles not a positive integer"
    if method == "reinhard":
        ok = _numbers(record["mean"], 3, -10, 10) and _numbers(record["std"], 3, MIN_STD, 10)
        return None if ok else "mean must be 3 numbers in [-10, 10] and std 3 numbers in [1e-4, 10]"
    vectors = record["stain_vectors"]
    ok = (
        isinstance(vectors, list)
        and len(vectors) == 2
        and all(_numbers(v, 3, 0, 1) and abs(math.hypot(*v) - 1) < 1e-3 for v in vectors)
        and _numbers(record["max_concentrations"], 2, MIN_MAX_C, 100)
    )
    return None if ok else "stain_vectors must be 2 unit vectors of 3 numbers in [0, 1], max_concentrations 2 in [1e-3, 100]"


class StainNormalizer(nn.Module):
    """Applies a fitted record to float batches N×3×H×W in [0, 1], in fp32 (fp64 kept) whatever the autocast."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        super().__init__()
        problem = record_problem(record)
        if problem is not None or record is None:
            raise ValueError(f"not a stain normalisation record: {problem}")
        self.record = dict(record)
        self.method, self.min_tissue = record["method"], float(record["min_tissue"])
        if self.method == "reinhard":
            self.register_buffer("target", torch.tensor([*record["mean"], *record["std"]]), persistent=False)
        else:
            self.register_buffer("target_he", torch.tensor(record["stain_vectors"]).T.contiguous(), persistent=False)
            self.register_buffer("target_max_c", torch.tensor(record["max_concentrations"]), persistent=False)

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> StainNormalizer | None:
        return None if record is None else cls(record)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"stain normalisation takes RGB batches N×3×H×W, got shape {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x if x.dtype == torch.float64 else x.float()
            if self.method == "reinhard":
                return reinhard(x, self.target, self.min_tissue)
            return macenko(x, self.target_he, self.target_max_c, self.min_tissue)

    def extra_repr(self) -> str:
        return f"method={self.method}, min_tissue={self.min_tissue}"


def fit_reference(
    method: str, reference: str | None, train_images: torch.Tensor, min_tissue: float, batch_size: int, device: torch.device
) -> dict[str, Any]:
    """The record for `data.stain_norm=method`: fitted to the image `reference`, or (None) to the training tiles."""
    from pathlib import Path

    if reference is None:
        images, source = train_images, f"the {len(train_images)} labelled training tiles"
    else:
        path = Path(reference).expanduser()
        if not path.is_file():
            raise UserError(
                f"data.stain_reference={reference} is not a file; pass a PNG/JPEG/TIFF/BMP tile of the stain appearance "
                "to normalise to, or leave it null to fit to the training split."
            )
        try:
            images = torch.from_numpy(read_image(path, REFERENCE_MAX_PIXELS)).permute(2, 0, 1)[None].contiguous()
        except Exception as err:  # decoders raise many types on malformed files (UnreadableImage: our own refusals)
            raise UserError(
                f"data.stain_reference={reference} cannot be read as an image ({str(err) or type(err).__name__}); pass a "
                "PNG/JPEG/TIFF/BMP tile, or leave it null to fit to the training split."
            ) from None
        source = f"data.stain_reference={reference}"
    try:
        return fit(method, images.to(device), min_tissue, batch_size)
    except NoTissue:
        raise UserError(
            f"data.stain_norm={method} cannot be fitted to {source}: none has at least data.stain_min_tissue="
            f"{min_tissue:g} of its pixels stained (optical density >= {BETA} in every channel), so there is no stain "
            "appearance to copy. Pass a reference tile with tissue (data.stain_reference=FILE), or lower data.stain_min_tissue."
        ) from None


def use_checkpoint_settings(data: Any, record: Mapping[str, Any] | None, ckpt: Any) -> None:
    """Set an evaluation's `data.stain_*` (an open DictConfig) to what checkpoint `ckpt` was trained with, so
    metrics.json records it; another normalisation asked for is refused, never silently replaced. A training
    run's data.stain_reference is dropped: the checkpoint's stored fit is used, never refitted."""

    method = "none" if record is None else record["method"]
    if data.get("stain_norm", "none") not in ("none", method):
        raise UserError(
            f"data.stain_norm={data.get('stain_norm')}, but {ckpt} was trained with stain_norm={method}: a checkpoint's "
            "tiles are normalised as in its training, with the statistics it stored. Leave data.stain_norm unset."
        )
    data.stain_norm, data.stain_reference = method, None
    if record is not None:
        data.stain_min_tissue = record["min_tissue"]
