"""Bootstrap intervals: resample the units (users, items) with replacement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Estimate", "bootstrap_interval", "estimate", "paired_difference"]


def bootstrap_interval(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` over ``n_boot`` seeded resamples."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (float("nan"), float("nan"))
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


@dataclass(frozen=True)
class Estimate:
    """A mean over units with its bootstrap 95 % interval; ``per_unit`` holds the units' values."""

    mean: float
    low: float
    high: float
    per_unit: pd.Series

    @property
    def n(self) -> int:
        return int(self.per_unit.notna().sum())

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def estimate(
    values: Sequence[float], units: Sequence[str], *, n_boot: int = 1000, seed: int = 0
) -> Estimate:
    """Average ``values`` within each unit, then over units, with a bootstrap over units."""
    if len(values) != len(units):
        raise ValueError(f"{len(values)} values for {len(units)} units")
    per = pd.Series(np.asarray(values, dtype=float)).groupby(np.asarray(units)).mean()
    lo, hi = bootstrap_interval(per.to_numpy(), n_boot=n_boot, seed=seed)
    return Estimate(float(per.mean()) if len(per) else float("nan"), lo, hi, per)


def paired_difference(a: Estimate, b: Estimate, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """``a - b`` unit by unit (the units both have), with a bootstrap over those units.

    The interval of a paired difference is what says whether two methods differ on the same
    users; two separate intervals overlapping or not does not.
    """
    both = a.per_unit.index.intersection(b.per_unit.index)
    diff = (a.per_unit.loc[both] - b.per_unit.loc[both]).dropna()
    lo, hi = bootstrap_interval(diff.to_numpy(), n_boot=n_boot, seed=seed)
    return Estimate(float(diff.mean()) if len(diff) else float("nan"), lo, hi, diff)
