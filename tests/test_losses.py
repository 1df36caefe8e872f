import math

import pytest
import torch
import torch.nn.functional as F

from sslpath.models.losses import nt_xent


def test_nt_xent_hand_computed():
    # Two images, orthogonal embeddings, each view identical to its partner; temperature 1.
    # Row 0 scores: partner cos=1, the two others cos=0 -> loss = -log(e / (e + 1 + 1)).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # scale must not matter: cosine similarity
    loss, acc = nt_xent(z1, z2, temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    assert acc.item() == 1.0


def test_nt_xent_temperature_and_negatives():
    # 3 pairs; the positive is at cos=1 and 2N-2 = 4 negatives at cos=0: -log(e^{1/t} / (e^{1/t} + 4)).
    z = torch.eye(3)
    t = 0.5
    loss, _ = nt_xent(z, z, temperature=t)
    assert loss.item() == pytest.approx(-math.log(math.exp(1 / t) / (math.exp(1 / t) + 4)), rel=1e-6)


def test_nt_xent_matches_naive_loop():
    torch.manual_seed(0)
    z1, z2, t = torch.randn(5, 7), torch.randn(5, 7), 0.3
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = 5
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = [z[i] @ z[j] / t for j in range(2 * n) if j != i]
        total += -(z[i] @ z[pos] / t - torch.logsumexp(torch.stack(sims), 0))
    loss, _ = nt_xent(z1, z2, t)
    assert loss.item() == pytest.approx((total / (2 * n)).item(), rel=1e-5)


def test_nt_xent_rejects_mismatched_views():
    with pytest.raises(ValueError):
        nt_xent(torch.zeros(3, 4), torch.zeros(2, 4), 0.5)


def test_module_equals_function_and_stays_fp32_under_bf16_autocast():
    from sslpath.models.losses import NTXentLoss

    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    expected, _ = nt_xent(z1, z2, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = NTXentLoss(0.2)(z1.bfloat16(), z2.bfloat16())
    assert got.dtype == torch.float32
    # bf16 inputs lose precision, but the logits and softmax ran in fp32: close to the fp32 loss
    assert got.item() == pytest.approx(expected.item(), abs=2e-2)
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
