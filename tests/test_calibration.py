"""Expected calibration error, reliability data and figure, temperature scaling (sslpath.results.calibration)."""

import io

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from sslpath.results.calibration import expected_calibration_error, fit_temperature, reliability, reliability_figure


@pytest.mark.parametrize("scale", [0.5, 3.0, 40.0])  # under-, roughly and over-confident; 40 reaches confidence 1.0
def test_ece_agrees_with_torchmetrics(scale):
    gen = torch.Generator().manual_seed(int(scale * 10))
    labels = torch.randint(0, 6, (500,), generator=gen)
    logits = torch.randn(500, 6, generator=gen)
    logits[torch.arange(500), labels] += 1.0
    probs = (logits * scale).softmax(dim=1)
    if scale == 40.0:
        assert (probs.max(dim=1).values == 1.0).any()  # the extra bin torchmetrics keeps for exactly 1.0 is used
    reference = MulticlassCalibrationError(num_classes=6, n_bins=15, norm="l1")(probs, labels)
    assert expected_calibration_error(labels.numpy(), probs.numpy(), bins=15) == pytest.approx(float(reference), abs=1e-6)


def test_reliability_bins_by_hand():
    """Confidences 0.95, 0.95 (one right), 0.55 (right), 1.0 (wrong) in 10 bins."""
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45], [1.0, 0.0]])
    labels = np.array([0, 0, 0, 1])
    rel = reliability(labels, probs, bins=10)
    assert len(rel.count) == 11 and rel.count.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 1]
    assert rel.accuracy[9] == 0.5 and rel.confidence[9] == pytest.approx(0.95)
    assert (rel.accuracy[5], rel.confidence[5]) == (1.0, 0.55)
    assert (rel.lower[10], rel.upper[10], rel.accuracy[10]) == (1.0, 1.0, 0.0)
    # ECE = 2/4 · |0.5 - 0.95| + 1/4 · |1 - 0.55| + 1/4 · |0 - 1| = 0.225 + 0.1125 + 0.25
    assert rel.ece == pytest.approx(0.5875)
    rows = rel.rows()
    assert rows[0] == {"lower": 0.0, "upper": 0.1, "count": 0, "confidence": None, "accuracy": None}
    assert rows[9]["count"] == 2


def test_reliability_figure_draws_every_model():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    curves = {name: reliability(labels, rng.dirichlet(np.ones(3) * a, 200), 15) for name, a in (("sharp", 0.3), ("flat", 3.0))}
    fig = reliability_figure(curves)
    top = fig.axes[0]
    assert [line.get_label() for line in top.get_lines()][1:] == [f"{name} (ECE {rel.ece:.3f})" for name, rel in curves.items()]
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_temperature_scaling_recovers_an_overconfident_models_temperature():
    """Labels drawn from softmax(z); the model reports 3·z, so T = 3 undoes its overconfidence."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=gen) * 2
    labels = torch.multinomial(z.softmax(dim=1), 1, generator=gen).squeeze(1)
    fit = fit_temperature(3 * z, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.val_nll_after < fit.val_nll_before
    under = fit_temperature(0.5 * z, labels)  # underconfident: T < 1 sharpens
    assert 0 < under.temperature < 1 and under.temperature == pytest.approx(0.5, rel=0.1)
    # ECE falls on fresh tiles from the same model when the fitted T is applied.
    z2 = torch.randn(4000, 5, generator=gen) * 2
    y2 = torch.multinomial(z2.softmax(dim=1), 1, generator=gen).squeeze(1)
    before = expected_calibration_error(y2.numpy(), (3 * z2).softmax(1).numpy(), 15)
    after = expected_calibration_error(y2.numpy(), (3 * z2 / fit.temperature).softmax(1).numpy(), 15)
    assert after < before / 2
