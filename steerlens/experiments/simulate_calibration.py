"""How the simulated users' choices are calibrated: utilities of candidate responses and the
Gumbel noise scale that gives a target pair accuracy (see steerlens.experiments.simulate)."""

from __future__ import annotations

from typing import Any

import numpy as np

from steerlens.metrics.attributes import ATTRIBUTES

__all__ = []


def _pair_accuracy(u: np.ndarray, noisy: np.ndarray) -> tuple[int, int]:
    """Agreements and pairs of (chosen = argmax noisy) vs each lower-scored candidate."""
    scores = _scores(noisy)
    c = int(np.argmax(noisy))
    agree = n = 0
    for j in range(len(u)):
        if j != c and scores[j] < scores[c]:
            n += 1
            agree += int(u[c] > u[j])
    return agree, n


def _scores(noisy: np.ndarray) -> np.ndarray:
    """1-100 scores, monotone in the noisy utility (so the chosen response scores highest)."""
    return np.clip(np.round(50 + 50 * np.tanh(noisy / 4)), 1, 100).astype(int)


def _calibrate(sets: list[np.ndarray], target: float, seed: int) -> tuple[float, float]:
    """Gumbel scale tau whose expected oracle pair accuracy on these candidate sets is ~target."""
    rng = np.random.default_rng(seed)
    draws = [rng.gumbel(size=(200, len(u))) for u in sets]

    def acc(tau: float) -> float:
        a = n = 0
        for u, g in zip(sets, draws, strict=True):
            for row in g:
                da, dn = _pair_accuracy(u, u + tau * row)
                a, n = a + da, n + dn
        return a / n if n else 1.0

    lo, hi = 0.0, 1.0
    while acc(hi) > target and hi < 64:
        lo, hi = hi, hi * 2
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if acc(mid) > target else (lo, mid)
    tau = (lo + hi) / 2
    return tau, acc(tau)


def _standardise(responses: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Store each response's attribute z-scores under ``"z"``; returns the means and s.d.s."""
    matrix = np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in responses])
    mean, std = matrix.mean(0), matrix.std(0) + 1e-9
    for r, row in zip(responses, matrix, strict=True):
        r["z"] = dict(zip(ATTRIBUTES, ((row - mean) / std).round(4).tolist(), strict=True))
    return mean, std


def _utility(w: np.ndarray, cands: list[dict[str, Any]]) -> np.ndarray:
    """A user's latent utility (weights @ attribute z-scores) of each candidate."""
    return np.array([w @ np.array([c["z"][a] for a in ATTRIBUTES]) for c in cands])
