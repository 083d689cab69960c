"""Bootstrap intervals: resample the units that vary (users, items) with replacement.

Where rows share a unit (a sweep's prompts belong to users), ``cluster_estimate`` resamples
in two stages: the clusters (users), then the rows (prompts) within each drawn cluster. An
interval over fewer than ``MIN_CLUSTERS`` units is withheld (``None`` / "n too small"), and
``direction`` words a comparison by its paired interval alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MIN_CLUSTERS",
    "Estimate",
    "bootstrap_interval",
    "cluster_estimate",
    "cluster_resamples",
    "direction",
    "estimate",
    "paired_difference",
    "reported",
]

MIN_CLUSTERS = 5
"""Below this many units an interval is not reported (a bootstrap over 3 users says little)."""


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

    @property
    def interval(self) -> list[float] | None:
        """``[low, high]``, or ``None`` below ``MIN_CLUSTERS`` units or where undefined."""
        return _interval_or_none(self.low, self.high, self.n)

    def reported(self, unit: str, digits: int = 5) -> dict[str, Any]:
        """The summary's form of an estimate: mean, interval (or ``None``), n and its unit."""
        return reported(self.mean, self.low, self.high, self.n, unit, digits)

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


def _interval_or_none(low: float, high: float, n: int) -> list[float] | None:
    if n < MIN_CLUSTERS or not (np.isfinite(low) and np.isfinite(high)):
        return None
    return [float(low), float(high)]


def reported(
    mean: float, low: float, high: float, n: int, unit: str, digits: int = 5
) -> dict[str, Any]:
    """``{"mean", "interval", "n", "unit"}``: the interval is ``None`` below ``MIN_CLUSTERS``
    units (the page then says "n too small")."""
    iv = _interval_or_none(low, high, n)
    return {
        "mean": round(float(mean), digits) if np.isfinite(mean) else None,
        "interval": None if iv is None else [round(v, digits) for v in iv],
        "n": int(n),
        "unit": unit,
    }


def cluster_resamples(
    clusters: Sequence[Hashable] | np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> list[np.ndarray]:
    """Row indices of ``n_boot`` two-stage resamples: the clusters with replacement, then,
    within each drawn cluster, its rows with replacement (as many as it has)."""
    codes, _ = pd.factorize(pd.Series(list(clusters), dtype=object))
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes) if codes.size else np.zeros(0, dtype=int)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if sizes.size else sizes
    k = sizes.size
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot if k else 0):
        drawn = rng.integers(0, k, size=k)
        size = sizes[drawn]
        within = np.floor(rng.random(int(size.sum())) * np.repeat(size, size)).astype(int)
        out.append(order[np.repeat(starts[drawn], size) + within])
    return out


def cluster_estimate(
    values: Sequence[float] | np.ndarray,
    clusters: Sequence[Hashable] | np.ndarray,
    *,
    base: Sequence[float] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """The mean of ``values`` over rows, with a two-stage bootstrap (clusters, then rows
    within them); ``n`` is the number of clusters.

    With ``base`` (the same rows' paired reference, e.g. each prompt's unsteered error) the
    statistic is the percentage change ``100 * (mean(values) / mean(base) - 1)``, resampled
    on the same rows. Rows where a value (or its base) is NaN are dropped first.

    The point estimate weights rows (a user with more prompts counts more), unlike
    ``estimate``'s mean of unit means; ``per_unit`` holds each cluster's mean of ``values``
    (not of the percentage change), so pair two such estimates with ``paired_difference``
    only without ``base``."""
    x = np.asarray(values, dtype=float)
    c = np.asarray(list(clusters), dtype=object)
    if x.shape[0] != c.shape[0]:
        raise ValueError(f"{x.shape[0]} values for {c.shape[0]} cluster labels")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    ok = ~np.isnan(x)
    b = None
    if base is not None:
        b = np.asarray(base, dtype=float)
        if b.shape != x.shape:
            raise ValueError(f"base has {b.shape[0]} rows for {x.shape[0]} values")
        ok &= ~np.isnan(b)
        b = b[ok]
    x, c = x[ok], c[ok]
    per = pd.Series(x).groupby(c).mean() if x.size else pd.Series(dtype=float)

    def stat(idx: np.ndarray | slice) -> float:
        if b is None:
            return float(x[idx].mean())
        denom = float(b[idx].mean())
        return 100.0 * (float(x[idx].mean()) / denom - 1.0) if denom else float("nan")

    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), per)
    point = stat(slice(None))
    boots = np.array([stat(i) for i in cluster_resamples(c, n_boot=n_boot, seed=seed)])
    boots = boots[np.isfinite(boots)]
    tail = (1 - level) / 2 * 100
    lo, hi = (
        (float(np.percentile(boots, tail)), float(np.percentile(boots, 100 - tail)))
        if boots.size
        else (float("nan"), float("nan"))
    )
    return Estimate(point, lo, hi, per)


def direction(
    interval: Sequence[float] | None,
    n: int,
    *,
    higher: str = "higher",
    lower: str = "lower",
    unit: str = "users",
) -> str:
    """The word for a paired difference: ``higher`` / ``lower`` only when its interval
    excludes 0; otherwise (or with no interval, below ``MIN_CLUSTERS``) "no difference
    detected (n = ...)"."""
    if interval is not None and n >= MIN_CLUSTERS:
        lo, hi = float(interval[0]), float(interval[1])
        if lo > 0:
            return higher
        if hi < 0:
            return lower
    return f"no difference detected (n = {n} {unit})"
