"""Schedules stepped per optimisation step, and no weight decay on norm weights and biases."""

import pytest
import torch
from torch import nn

from sslpath.models.optim import multistep, parameter_groups, warmup_cosine


def lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def sgd() -> torch.optim.SGD:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)


def test_warmup_then_cosine_per_step():
    curve = lrs(warmup_cosine(sgd(), steps_per_epoch=10, max_epochs=5, warmup_epochs=1), 50)
    assert curve[0] == pytest.approx(1 / 11) and curve[9] == pytest.approx(10 / 11)  # linear ramp over 10 steps
    assert curve[10] == pytest.approx(1.0)  # the peak, then cosine decay to 0 at the last step
    assert all(a >= b for a, b in zip(curve[10:], curve[11:])) and curve[-1] < 0.01
    assert curve[30] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 20 / 40)).item()))


def test_multistep_milestones_are_epochs():
    curve = lrs(multistep(sgd(), steps_per_epoch=4, max_epochs=8, milestones=[2, 6], gamma=0.1), 32)
    assert curve[7] == pytest.approx(1.0) and curve[8] == pytest.approx(0.1) and curve[24] == pytest.approx(0.01)


def test_norm_and_bias_parameters_get_no_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, no_decay_norm_bias=True)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias), id(model[3].bias)}
    assert no_decay["weight_decay"] == 0.0
    (everything,) = parameter_groups(model, no_decay_norm_bias=False)
    assert len(everything["params"]) == 5
