"""Stain normalisation (sslpath.data.stain_norm): each method against its reference on real tiles, batching,
background tiles, the record in checkpoints, and one normalisation for train, evaluate and predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sslpath.core.errors import UserError
from sslpath.data.augment import BatchTransform
from sslpath.data.stain import jitter_stains
from sslpath.data.stain_norm import NoTissue, StainNormalizer, fit, fit_reference, record_problem, tissue_mask
from sslpath.data.synthetic import synthetic_splits
from sslpath.evaluation.evaluate import evaluate
from sslpath.evaluation.predict import predict
from sslpath.models.checkpoint import load_inference_model, read_metadata
from sslpath.training.fit import train

from factories import SYNTHETIC, compose_cfg, compose_evaluate, compose_predict, he_tiles, read_csv

IO, ALPHA, BETA = 240.0, 1.0, 0.15


def macenko_reference(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Macenko et al.'s reference code (HEnorm_python, as torchstain's numpy path), float64, one H×W×3 image,
    not rounded to uint8."""

    def matrices(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        od = -np.log((rgb.reshape(-1, 3).astype(float) + 1) / IO)
        tissue = od[~np.any(od < BETA, axis=1)]
        _, vecs = np.linalg.eigh(np.cov(tissue.T))
        proj = tissue @ vecs[:, 1:3]
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, ALPHA), np.percentile(phi, 100 - ALPHA)
        v_min, v_max = vecs[:, 1:3] @ [np.cos(lo), np.sin(lo)], vecs[:, 1:3] @ [np.cos(hi), np.sin(hi)]
        he = np.stack([v_min, v_max], 1) if v_min[0] > v_max[0] else np.stack([v_max, v_min], 1)
        conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
        return he, conc, np.percentile(conc, 99, axis=1)

    he_ref, _, max_ref = matrices(reference)
    _, conc, max_c = matrices(image)
    out = np.minimum(IO * np.exp(-he_ref @ (conc / (max_c / max_ref)[:, None])), 255)
    return out.T.reshape(image.shape)


# Reinhard et al. 2001 as printed: eq. 4 (RGB -> LMS), 6 (log LMS -> lαβ) and their printed inverses (eq. 8, 9).
# The printed LMS -> RGB matrix is the inverse of eq. 4's to 0.7% only (its product with it has 1.0072 off the
# diagonal): ours uses the exact inverse, which the reference below takes too; PRINTED_LMS_RGB bounds the difference.
RGB_LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
PRINTED_LMS_RGB = np.array([[4.4679, -3.5873, 0.1193], [-1.2186, 2.3809, -0.1624], [0.0497, -0.2439, 1.2045]])
LMS_LAB = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])
LAB_LMS = np.array([[1, 1, 1], [1, 1, -1], [1, -2, 0]]) @ np.diag([math.sqrt(3) / 3, math.sqrt(6) / 6, math.sqrt(2) / 2])


def reinhard_reference(image: np.ndarray, reference: np.ndarray, lms_rgb: np.ndarray | None = None) -> np.ndarray:
    """The paper's formulas on one H×W×3 image in [0, 255] (LMS floored at one grey level, as ours), float64."""
    lms_rgb = np.linalg.inv(RGB_LMS) if lms_rgb is None else lms_rgb

    def lab(rgb: np.ndarray) -> np.ndarray:
        return np.log10(np.maximum(rgb.reshape(-1, 3) / 255 @ RGB_LMS.T, 1 / 255)) @ LMS_LAB.T

    src, ref = lab(image), lab(reference)
    out = (src - src.mean(0)) / src.std(0) * ref.std(0) + ref.mean(0)
    rgb = (10 ** (out @ LAB_LMS.T)) @ lms_rgb.T
    return (np.clip(rgb, 0, 1) * 255).reshape(image.shape)


def tissue_tiles(min_share: float = 0.15) -> torch.Tensor:
    tiles = he_tiles()
    return tiles[tissue_mask(tiles.float() / 255).float().mean(1) >= min_share]


def normalise(method: str, tiles: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Our batched normalisation of uint8 tiles to one reference tile, as floats on the 0–255 scale."""
    record = fit(method, reference[None], 0.0, 64)
    return StainNormalizer(record)(tiles.float() / 255) * 255


@pytest.mark.parametrize("method, reference_fn", [("macenko", macenko_reference), ("reinhard", reinhard_reference)])
def test_each_method_matches_its_reference_on_real_tiles(method, reference_fn):
    tiles = tissue_tiles()
    reference = tiles[0]
    # another centre's stain: 30% more haematoxylin and eosin than the reference's tiles
    shift = torch.tensor([1.3, 1.3, 1.0]).view(1, 3, 1, 1)
    batch = (jitter_stains(tiles[1:].double() / 255, shift, torch.zeros(1, 3, 1, 1)) * 255).round().to(torch.uint8)
    ours = normalise(method, batch, reference).permute(0, 2, 3, 1).double().numpy()
    theirs = np.stack([reference_fn(t, reference.permute(1, 2, 0).numpy()) for t in batch.permute(0, 2, 3, 1).numpy()])
    diff = np.abs(ours - theirs)
    assert len(batch) > 50 and diff.max() < 0.1, (diff.max(), diff.mean())  # a tenth of a grey level everywhere
    assert np.abs(ours - batch.permute(0, 2, 3, 1).numpy()).mean() > 5  # and it did change the colours
    if method == "reinhard":  # the paper's printed inverse moves pixels by at most a few grey levels
        printed = [
            reinhard_reference(t, reference.permute(1, 2, 0).numpy(), PRINTED_LMS_RGB) for t in batch.permute(0, 2, 3, 1).numpy()
        ]
        assert np.abs(ours - np.stack(printed)).max() < 3


def test_batching_does_not_change_a_tile():
    tiles = he_tiles()[:12]
    for method in ("macenko", "reinhard"):
        norm = StainNormalizer(fit(method, tiles, 0.1, 16))
        x = tiles.float() / 255
        alone = torch.cat([norm(t[None]) for t in x])
        torch.testing.assert_close(norm(x), alone, atol=1e-5, rtol=0)


def test_fit_is_the_median_over_tiles_with_tissue():
    tiles = tissue_tiles()[:9]
    white = torch.full((5, 3, 28, 28), 250, dtype=torch.uint8)
    record = fit("reinhard", torch.cat([tiles, white]), 0.1, 4)
    per_tile = [fit("reinhard", t[None], 0.1, 1) for t in tiles]
    assert record["tiles"] == 9
    assert record["mean"] == pytest.approx([float(np.median([r["mean"][c] for r in per_tile])) for c in range(3)], abs=1e-6)
    macenko = fit("macenko", tiles, 0.1, 4)
    assert all(abs(math.hypot(*v) - 1) < 1e-9 for v in macenko["stain_vectors"])
    assert record_problem(record) is None and record_problem(macenko) is None


def test_background_and_odd_tiles_stay_finite_and_white_stays_white():
    gen = torch.Generator().manual_seed(0)
    white = torch.full((1, 3, 28, 28), 255, dtype=torch.uint8)
    near_white = (245 + torch.randint(0, 8, (1, 3, 28, 28), generator=gen)).to(torch.uint8)
    some_tissue = near_white.clone()
    some_tissue[..., :3, :] = he_tiles()[0, :, :3, :]  # about 10% tissue rows
    flat = torch.full((1, 3, 28, 28), 120, dtype=torch.uint8)
    black = torch.zeros((1, 3, 28, 28), dtype=torch.uint8)
    odd = torch.cat([white, near_white, some_tissue, flat, black, he_tiles()[:3]]).float() / 255
    for method in ("macenko", "reinhard"):
        out = StainNormalizer(fit(method, tissue_tiles(), 0.1, 64))(odd)
        assert out.isfinite().all() and out.min() >= 0 and out.max() <= 1, method
        assert torch.equal(out[:2], odd[:2]), method  # background passes through
    record = fit("macenko", tissue_tiles(), 0.0, 64) | {"min_tissue": 0.0}
    out = StainNormalizer(record)(odd)  # no tissue threshold at all: still finite
    assert out.isfinite().all() and torch.equal(out[0], odd[0])


def test_no_tissue_to_fit_to_is_a_user_error(tmp_path):
    white = torch.full((4, 3, 28, 28), 250, dtype=torch.uint8)
    with pytest.raises(NoTissue):
        fit("macenko", white, 0.1, 4)
    with pytest.raises(UserError, match=r"cannot be fitted to the 4 labelled training tiles: none has at least"):
        fit_reference("macenko", None, white, 0.1, 4, torch.device("cpu"))
    (tmp_path / "ref.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"data.stain_reference=.*ref.png cannot be read as an image"):
        fit_reference("reinhard", str(tmp_path / "ref.png"), white, 0.1, 4, torch.device("cpu"))
    with pytest.raises(UserError, match=r"is not a file"):
        fit_reference("reinhard", str(tmp_path / "missing.png"), white, 0.1, 4, torch.device("cpu"))


@pytest.fixture(scope="module")
def normalised_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("run")
    # experiment=stain_robust's "both" cell: normalisation and stain-robust augmentation
    overrides = ["model=baseline", "trainer.max_epochs=2", "optimizer.lr=0.01", "data.stain_norm=macenko"]
    cfg = compose_cfg(out, [*overrides, "augment@augment.train=stain_robust"])
    metrics = train(cfg)
    return {"dir": out, "ckpt": Path(metrics["ckpt_path"]), "metrics": metrics}


def test_a_normalised_checkpoint_is_evaluated_and_predicts_with_its_own_normalisation(normalised_run, tmp_path):
    ckpt = normalised_run["ckpt"]
    model, meta = load_inference_model(ckpt)
    record = meta.stain_norm
    assert record["method"] == "macenko" and record["tiles"] > 10 and record_problem(record) is None

    out = tmp_path / "eval"
    metrics = evaluate(compose_evaluate(f"ckpt={ckpt}", *SYNTHETIC, f"out={out}", "device=cpu", "report=false"))
    assert metrics["test_acc"] == normalised_run["metrics"]["test_acc"]
    assert metrics["data"]["stain_norm"] == "macenko" and metrics["tta"] is False and "tta_plain" not in metrics

    npz = tmp_path / "tiles.npz"
    tiles = synthetic_splits(16, 9, {"train": 1, "val": 1, "test": 20}, 7)["test"].images  # new tiles, 80-95% stained
    np.savez(npz, test_images=tiles.permute(0, 2, 3, 1).numpy(), test_labels=np.zeros((20, 1), dtype=np.uint8))
    csv = tmp_path / "p.csv"
    predict(compose_predict(f"ckpt={ckpt}", f"input={npz}", f"out={csv}", "device=cpu"))
    names = meta.class_names
    got = np.array([[float(row[n]) for n in names] for row in read_csv(csv)])
    with torch.no_grad():
        same = BatchTransform(mean=meta.mean, std=meta.std, channels_last=False, stain=StainNormalizer(record))
        plain = BatchTransform(mean=meta.mean, std=meta.std, channels_last=False)
        expected, unnormalised = (model(t(tiles)).softmax(dim=1).numpy() for t in (same, plain))
    assert np.abs(got - expected).max() <= 2e-6
    assert np.abs(got - unnormalised).max() > 1e-3  # the normalisation is applied, not skipped


def test_evaluate_refuses_another_normalisation_than_the_checkpoints(normalised_run, tmp_path):
    cfg = compose_evaluate(f"ckpt={normalised_run['ckpt']}", *SYNTHETIC, f"out={tmp_path / 'e'}", "data.stain_norm=reinhard")
    with pytest.raises(UserError, match="was trained with stain_norm=macenko"):
        evaluate(cfg)
    assert not (tmp_path / "e").exists()


def test_a_forged_record_is_refused(normalised_run, tmp_path):
    ckpt = torch.load(normalised_run["ckpt"], map_location="cpu", weights_only=True)
    for bad in (
        {"method": "macenko"},
        ckpt["sslpath"]["stain_norm"] | {"max_concentrations": [float("nan"), 1.0]},
        ckpt["sslpath"]["stain_norm"] | {"stain_vectors": [[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]},
        {"method": "vahadane", "min_tissue": 0.1, "tiles": 1},
    ):
        forged = ckpt | {"sslpath": ckpt["sslpath"] | {"stain_norm": bad}}
        with pytest.raises(UserError, match=r"has stain_norm=.*allowed: null, or \{method: reinhard"):
            read_metadata(forged, "x.ckpt")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.stain_norm=vahadane"], "data.stain_norm='vahadane' is not valid: it must be one of none, reinhard, macenko"),
        (["data.stain_min_tissue=1.5"], "data.stain_min_tissue=1.5 is not valid"),
        (["data.stain_reference=ref.png"], "data.stain_reference=ref.png but data.stain_norm=none"),
    ],
)
def test_bad_settings_are_refused_before_any_data(tmp_path, overrides, message, monkeypatch):
    from sslpath.checks.validate import validate

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the settings were checked")

    monkeypatch.setattr("sslpath.data.datamodule.ArrayDataModule.setup", no_data)
    cfg = compose_cfg(tmp_path, overrides)
    with pytest.raises(UserError) as err:
        validate(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_metadata_without_stain_norm_reads_as_none(normalised_run):
    ckpt = torch.load(normalised_run["ckpt"], map_location="cpu", weights_only=True)
    meta = {k: v for k, v in ckpt["sslpath"].items() if k != "stain_norm"}
    assert read_metadata(ckpt | {"sslpath": meta}, "x.ckpt").stain_norm is None
    assert json.dumps(ckpt["sslpath"]["stain_norm"], allow_nan=False)  # plain numbers only


def test_the_stain_robust_experiment_compares_the_four_recipes():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module("sslpath.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=stain_robust"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert (params["data.stain_norm"], params["augment@augment.train"]) == ("none,macenko", "flips,stain_robust")
    assert "stain_shift" in cfg.robustness.names and cfg.hydra.callbacks.robustness._target_.endswith("SweepRobustness")


def test_the_stain_robust_augmentation_is_the_supervised_recipe(tmp_path):
    """Flips, right-angle rotations, HED and HSV jitter at pathology.yaml's strengths, without its SSL crops and grayscale."""
    from hydra.utils import instantiate

    cfg = compose_cfg(tmp_path, ["augment@augment.train=stain_robust", "augment@augment.ssl=pathology"])
    ours, ssl = (instantiate(node, _convert_="all").ops for node in (cfg.augment.train, cfg.augment.ssl))
    names = [type(op).__name__ for op in ours]
    assert names == ["RandomHorizontalFlip", "RandomVerticalFlip", "RandomRotate90", "RandomHEDJitter", "ColorJitter"]
    shared = {type(op).__name__: op for op in ssl}
    assert ours[3].extra_repr() == shared["RandomHEDJitter"].extra_repr()
    assert "RandomResizedCrop" in shared and "RandomGrayscale" in shared
