"""The momentum (EMA) schedule of BYOL, MoCo v3 and DINO, and how much of a target's random
initialisation survives a run of a given length.

After optimiser step k of K the target becomes θ_m ← m_k·θ_m + (1 − m_k)·θ, m_k rising from
m_start to m_end on lightly's cosine (BYOL's schedule, reaching m_end at the last step). The
target's initial weights then enter its final weights with the factor Π_k m_k: the *init share*.
The papers' m_start (0.99–0.9995) assume 10⁴–10⁶ steps, where that share is ~0; on a run of 40
steps it is 0.82 (m_start 0.99) or 0.99 (0.9995): the target is still mostly its random start.
`start_for_share` finds the m_start at which the run's share is a given value.
"""

from __future__ import annotations

import math

import numpy as np

# Bisection steps for start_for_share: 60 halvings of [0, 1] leave an interval below 1e-18.
_BISECTION_STEPS = 60


def schedule(total: int, start: float, end: float) -> np.ndarray:
    """m_k for k = 0 … total−1: the values `lightly.utils.scheduler.cosine_schedule(k, total, start,
    end)` gives one by one (m_end at the last step; m_end throughout when total <= 1)."""
    if total <= 1:
        return np.full(max(total, 0), end, dtype=np.float64)
    k = np.arange(total, dtype=np.float64)
    values = end - (end - start) * (np.cos(np.pi * k / (total - 1)) + 1) / 2
    values[-1] = end
    return values


def init_share(total: int, start: float, end: float = 1.0) -> float:
    """Π_k m_k over a run of `total` optimiser steps: the weight of the target's initial parameters
    in its parameters at the end of the run (1.0: never moved; 0.0: fully replaced)."""
    values = schedule(total, start, end)
    if np.any(values <= 0):
        return 0.0
    return float(math.exp(np.log(values).sum()))


def start_for_share(total: int, start: float, end: float, share: float) -> float:
    """The largest m_start <= `start` whose run keeps at most `share` of the target's initial
    weights: `start` itself when it already does, else the m_start at which the share is `share`
    (to 1e-12). A run of 0 or 1 steps never moves its target: `start` is returned unchanged."""
    if total <= 1 or init_share(total, start, end) <= share:
        return start
    low, high = 0.0, start  # init_share rises with m_start: share(low) = 0 <= share < share(high)
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        low, high = (mid, high) if init_share(total, mid, end) <= share else (low, mid)
    return low
