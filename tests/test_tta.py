"""Test-time augmentation over the dihedral group (sslpath.evaluation.tta) in evaluate and predict."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch

from sslpath.core.errors import UserError
from sslpath.data.augment import BatchTransform
from sslpath.evaluation.evaluate import evaluate
from sslpath.evaluation.predict import predict
from sslpath.evaluation.tta import TRANSFORMS, DihedralTTA, dihedral
from sslpath.models.checkpoint import load_inference_model
from sslpath.results.artifacts import class_logits

from factories import SYNTHETIC, compose_evaluate, compose_predict, read_csv


def test_the_eight_transforms_are_the_dihedral_group():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    images = [dihedral(x, k) for k in range(TRANSFORMS)]
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8  # all distinct
    assert torch.equal(images[0], x)
    for k in range(TRANSFORMS):  # closed: any transform of any transform is one of the eight
        for j in range(TRANSFORMS):
            assert any(torch.equal(dihedral(images[k], j), im) for im in images)


def test_tta_is_invariant_to_rotating_and_mirroring_the_input():
    """An orientation-dependent toy model (a linear layer on the raw pixels) gives one prediction for a tile
    and for its rotations and mirrors under TTA, and different ones without it."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3 * 8 * 8, 5)
    plain = lambda x: layer(x.float().flatten(1))
    tta = DihedralTTA(plain)
    tiles = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        for k in range(1, TRANSFORMS):
            turned = dihedral(tiles, k)
            torch.testing.assert_close(tta(turned), tta(tiles), atol=1e-5, rtol=0)
            assert (plain(turned) - plain(tiles)).abs().max() > 1e-2
        probs = tta(tiles).softmax(dim=1)
        expected = torch.stack([plain(dihedral(tiles, k)).softmax(dim=1) for k in range(TRANSFORMS)]).mean(0)
        torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)  # softmax of its output = mean softmax


def test_confident_models_stay_finite():
    """A softmax that underflows to 0 (a logit 10⁴ below another) still gives finite logits, not log 0."""
    tta = DihedralTTA(lambda x: torch.tensor([[0.0, 1e4]]).expand(len(x), 2))
    out = tta(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    assert out.isfinite().all() and out[0, 1] == pytest.approx(0, abs=1e-6) and out[0, 0] == pytest.approx(-1e4)


def test_evaluate_tta_records_it_beside_the_plain_result(tiny_trained, tmp_path):
    common = [f"ckpt={tiny_trained['ckpt']}", *SYNTHETIC, "device=cpu", "report=false"]
    plain = evaluate(compose_evaluate(*common, f"out={tmp_path / 'plain'}"))
    run = tiny_trained["metrics"]
    assert plain["tta"] is False and "tta_plain" not in plain
    assert plain["test_acc"] == run["test_acc"] and plain["test_loss"] == pytest.approx(
        run["test_loss"], abs=1e-5
    )  # today's result

    tta = evaluate(compose_evaluate(*common, f"out={tmp_path / 'tta'}", "tta=true"))
    assert tta == json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert tta["tta"] is True
    assert tta["tta_plain"] == {k: pytest.approx(plain[k], abs=1e-6) for k in ("test_loss", "test_acc", "test_auc")}

    model, meta = load_inference_model(tiny_trained["ckpt"])
    images = tiny_trained["splits"]["test"].images
    transform = BatchTransform(mean=meta.mean, std=meta.std)
    with torch.no_grad():
        expected = DihedralTTA(partial(class_logits, model, transform, device=torch.device("cpu")))(images).softmax(1)
    labels = tiny_trained["splits"]["test"].labels
    assert tta["test_acc"] == pytest.approx(float((expected.argmax(1) == labels).float().mean()), abs=1e-9)
    assert tta["test_loss"] != pytest.approx(plain["test_loss"], abs=1e-4)  # the averaged prediction differs


def test_predict_tta_writes_the_mean_softmax(tiny_trained, tmp_path):
    out = tmp_path / "p.csv"
    predict(
        compose_predict(f"ckpt={tiny_trained['ckpt']}", f"input={tiny_trained['npz']}", f"out={out}", "device=cpu", "tta=true")
    )
    model, meta = load_inference_model(tiny_trained["ckpt"])
    images = tiny_trained["splits"]["test"].images
    transform = BatchTransform(mean=meta.mean, std=meta.std, channels_last=False)
    with torch.no_grad():
        expected = torch.stack([model(transform(dihedral(images, k))).softmax(1) for k in range(TRANSFORMS)]).mean(0)
    got = np.array([[float(row[n]) for n in meta.class_names] for row in read_csv(out)])
    assert np.abs(got - expected.numpy()).max() <= 2e-6


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_tta_must_be_true_or_false(tiny_trained, tmp_path, command):
    if command == "evaluate":
        cfg, run = compose_evaluate(f"ckpt={tiny_trained['ckpt']}", *SYNTHETIC, f"out={tmp_path / 'e'}", "tta=d4"), evaluate
    else:
        cfg, run = (
            compose_predict(f"ckpt={tiny_trained['ckpt']}", f"input={tiny_trained['npz']}", f"out={tmp_path / 'p.csv'}", "tta=8"),
            predict,
        )
    with pytest.raises(UserError, match=r"tta=(d4|8) is not true or false"):
        run(cfg)
