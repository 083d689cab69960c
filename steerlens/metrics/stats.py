"""Bootstrap intervals: resample the units that vary (users, items) with replacement.

Where rows share a unit (a sweep's prompts belong to users), ``cluster_estimate`` resamples
in two stages: the clusters (users), then the rows (prompts) within each drawn cluster. Where
every user meets the same items (neutral texts, held-out prompts), ``crossed_estimate``
resamples users and items independently (the pigeonhole bootstrap), so that item variance is
in the interval too. An interval over fewer than ``MIN_CLUSTERS`` units is withheld
(``None`` / "n too small"), and ``direction`` words a comparison by its paired interval, and
only over at least ``MIN_WORDED`` = 10 units.

The interval. The bootstrap is the resampling engine, but the interval is not its
percentiles: it is ``point +- t_{k-1} * se_boot * sqrt(k / (k - 1))`` (``t_interval``), the
bootstrap standard error with Student-t critical values on ``k - 1`` degrees of freedom and
the small-sample correction, ``k`` the number of top-level units (clusters; when crossed,
Satterthwaite's degrees of freedom + 1, between the smaller and the larger number of users
and items: ``crossed_k``). Why: an interval is shown from ``MIN_CLUSTERS`` = 5 units on,
and there percentile intervals are too narrow (a null simulation covered 0.85 at n = 5 for
normal data, 0.72 for skewed data, 0.88 two-stage at 6 users x 7 prompts, against 0.95);
the bootstrap SE underestimates by ``sqrt((k - 1) / k)`` and the normal quantile is too
small at 4 degrees of freedom. For a mean of normal unit values this interval is Student's
t interval; ``tests/unit/metrics/test_interval_coverage.py`` checks, by null simulation at
the minimum n, that one-stage, two-stage and crossed intervals cover at least 0.93 (about
0.95 one-stage, 0.96-0.98 two-stage and crossed). The two-stage and crossed resamples count
the residual variance more than once, so those two intervals err wide. Strongly skewed unit
values still undercover at n = 5 (about 0.93 for skewness 1, 0.91 for 1.75, 0.88 for an
exponential's 2); a bootstrap-t reaches 0.93 there, but is wider and needs a per-resample
standard error that the two-stage and ratio statistics do not have. Hence no direction word
below ``MIN_WORDED`` units. Crossed intervals over fewer than ``MIN_CLUSTERS`` items are
withheld too.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import stdtrit

__all__ = [
    "MIN_CLUSTERS",
    "MIN_WORDED",
    "Estimate",
    "bootstrap_interval",
    "cluster_estimate",
    "cluster_resamples",
    "crossed_estimate",
    "crossed_k",
    "crossed_weights",
    "direction",
    "estimate",
    "holm",
    "interval_pvalue",
    "paired_difference",
    "reported",
    "t_interval",
]

MIN_CLUSTERS = 5
"""Below this many units an interval is not reported (a bootstrap over 3 users says little)."""

MIN_WORDED = 10
"""Below this many units a comparison gets no direction word ("higher" / "lower"), whatever
its interval: the t interval covers at ``MIN_CLUSTERS`` for normal-like unit values, but
skewed ones (an exponential shape) cover about 0.88 there; the interval is still shown."""


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def t_interval(
    point: float, boots: Sequence[float] | np.ndarray, k: int, *, level: float = 0.95
) -> tuple[float, float]:
    """``point +- t_{k-1, (1+level)/2} * sd(boots) * sqrt(k / (k - 1))``: the bootstrap
    standard error of a statistic over ``k`` top-level units, corrected for small samples, with
    Student-t critical values. NaN where ``k < 2``, ``point`` is not finite or fewer than two
    resamples are finite (non-finite resamples are dropped)."""
    _check_level(level)
    b = np.asarray(boots, dtype=float)
    b = b[np.isfinite(b)]
    if k < 2 or b.size < 2 or not np.isfinite(point):
        return (float("nan"), float("nan"))
    se = float(b.std(ddof=1)) * float(np.sqrt(k / (k - 1)))
    half = float(stdtrit(k - 1, 0.5 + level / 2)) * se
    return (float(point) - half, float(point) + half)


def bootstrap_interval(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Interval of the mean of ``values`` from ``n_boot`` seeded resamples (``t_interval``:
    the bootstrap SE with t critical values on ``n - 1`` df; NaN for fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (float("nan"), float("nan"))
    _check_level(level)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return t_interval(float(x.mean()), means, x.size, level=level)


@dataclass(frozen=True)
class Estimate:
    """A mean over units with its bootstrap interval (95 % unless asked otherwise; see the
    module's note on how it is formed); ``per_unit`` holds the units' values."""

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
    values: Sequence[float],
    units: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """Average ``values`` within each unit, then over units, with a bootstrap over units."""
    if len(values) != len(units):
        raise ValueError(f"{len(values)} values for {len(units)} units")
    per = pd.Series(np.asarray(values, dtype=float)).groupby(np.asarray(units)).mean()
    lo, hi = bootstrap_interval(per.to_numpy(), n_boot=n_boot, seed=seed, level=level)
    return Estimate(float(per.mean()) if len(per) else float("nan"), lo, hi, per)


def paired_difference(
    a: Estimate, b: Estimate, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """``a - b`` unit by unit (the units both have), with a bootstrap over those units.

    The interval of a paired difference is what says whether two methods differ on the same
    users; two separate intervals overlapping or not does not.
    """
    both = a.per_unit.index.intersection(b.per_unit.index)
    diff = (a.per_unit.loc[both] - b.per_unit.loc[both]).dropna()
    lo, hi = bootstrap_interval(diff.to_numpy(), n_boot=n_boot, seed=seed, level=level)
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
    within them); ``n`` is the number of clusters, and the interval is ``t_interval``'s on
    ``n - 1`` df.

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
    _check_level(level)
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
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), per)
    codes, _ = pd.factorize(pd.Series(c, dtype=object))
    cols = np.stack([x, np.ones_like(x)] if b is None else [x, b])
    sums = _two_stage_sums(codes, cols, n_boot=n_boot, seed=seed)

    def stat(sx: np.ndarray | float, sy: np.ndarray | float) -> np.ndarray:
        num, den = np.asarray(sx, dtype=float), np.asarray(sy, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = num / den
        return r if b is None else 100.0 * (r - 1.0)

    point = float(stat(x.sum(), cols[1].sum()))
    lo, hi = t_interval(point, stat(sums[0], sums[1]), len(per), level=level)
    return Estimate(point, lo, hi, per)


def _two_stage_sums(
    codes: np.ndarray, cols: np.ndarray, *, n_boot: int, seed: int, cells: int = 2_000_000
) -> np.ndarray:
    """``[n_col, n_boot]``: each column of ``cols`` (``[n_col, n_row]``) summed over the rows
    of ``n_boot`` two-stage resamples (clusters ``codes`` with replacement, then as many rows
    as a drawn cluster has, with replacement, within it); vectorised in chunks of at most
    ``cells`` (resample x cluster x row) draws."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    k, width = sizes.size, int(sizes.max())
    # [n_col, cluster, position]: each cluster's rows, zero-padded to the largest cluster
    pos = np.arange(codes.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    padded = np.zeros((cols.shape[0], k, width))
    padded[:, codes[order], pos] = cols[:, order]
    rng = np.random.default_rng(seed)
    out = np.empty((cols.shape[0], n_boot))
    step = max(1, cells // (k * width))
    for start in range(0, n_boot, step):
        m = min(step, n_boot - start)
        drawn = rng.integers(0, k, size=(m, k))
        size = sizes[drawn][..., None]
        within = np.floor(rng.random((m, k, width)) * size).astype(int)
        keep = np.arange(width) < size
        got = padded[:, drawn[..., None], within] * keep
        out[:, start : start + m] = got.sum(axis=(2, 3))
    return out


def crossed_estimate(
    values: Sequence[float] | np.ndarray,
    users: Sequence[Hashable] | np.ndarray,
    items: Sequence[Hashable] | np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """The mean of ``values`` over rows where users and items are crossed (every user meets
    the same items), with a bootstrap that resamples users and items independently (the
    pigeonhole bootstrap: a resample is the drawn users' rows on the drawn items), so that
    both users' and items' variance are in the interval.

    The interval is ``t_interval`` with ``k`` from ``crossed_k`` (Satterthwaite's degrees of
    freedom of the users' and the items' variance, each from resampling that dimension
    alone); ``n`` is the number
    of users and ``per_unit`` each user's mean, as for ``cluster_estimate``. Rows whose value
    is NaN are dropped; missing cells are allowed (the resample's mean is over its rows)."""
    x = np.asarray(values, dtype=float)
    u = np.asarray(list(users), dtype=object)
    v = np.asarray(list(items), dtype=object)
    if not x.shape[0] == u.shape[0] == v.shape[0]:
        raise ValueError(f"{x.shape[0]} values for {u.shape[0]} users and {v.shape[0]} items")
    _check_level(level)
    ok = ~np.isnan(x)
    x, u, v = x[ok], u[ok], v[ok]
    per = pd.Series(x).groupby(u).mean() if x.size else pd.Series(dtype=float)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), per)
    ui, uu = pd.factorize(pd.Series(u, dtype=object))
    vi, vv = pd.factorize(pd.Series(v, dtype=object))
    n_u, n_v = len(uu), len(vv)
    total, count = np.zeros((n_u, n_v)), np.zeros((n_u, n_v))
    np.add.at(total, (ui, vi), x)
    np.add.at(count, (ui, vi), 1.0)
    rng = np.random.default_rng(seed)
    wu = _draw_counts(rng, n_u, n_boot)
    wv = _draw_counts(rng, n_v, n_boot)
    ones_u, ones_v = np.ones_like(wu), np.ones_like(wv)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots, by_user, by_item = (
            np.einsum("bi,ij,bj->b", a, total, b) / np.einsum("bi,ij,bj->b", a, count, b)
            for a, b in ((wu, wv), (wu, ones_v), (ones_u, wv))
        )
    k = crossed_k(by_user, by_item, n_u, n_v)
    lo, hi = t_interval(float(total.sum() / count.sum()), boots, k, level=level)
    if 1 < n_v < MIN_CLUSTERS:  # too few items to say how they vary: no interval
        lo, hi = float("nan"), float("nan")
    return Estimate(float(total.sum() / count.sum()), lo, hi, per)


def crossed_k(by_user: np.ndarray, by_item: np.ndarray, n_users: int, n_items: int) -> int:
    """``k`` (degrees of freedom + 1) for a crossed design's ``t_interval``: Satterthwaite's
    approximation from the variance resampling users alone (``by_user``) and items alone
    (``by_item``) gives, kept between the smaller and the larger number of levels that vary.
    Items that agree leave the users' degrees of freedom; users that agree, the items'."""
    varying = [n for n in (n_users, n_items) if n > 1]
    if not varying:
        return 1
    parts = [
        (float(np.nanvar(b, ddof=1)), n)
        for b, n in ((by_user, n_users), (by_item, n_items))
        if n > 1 and np.isfinite(b).sum() > 1
    ]
    total = sum(v for v, _ in parts)
    denom = sum(v * v / (n - 1) for v, n in parts)
    if total <= 0 or denom <= 0:
        return min(varying)
    df = total * total / denom
    return int(np.clip(np.floor(df) + 1, min(varying), max(varying)))


def crossed_weights(
    users: Sequence[Hashable] | np.ndarray,
    items: Sequence[Hashable] | np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crossed resamples as row weights, for a statistic that ``crossed_estimate``'s plain
    mean does not cover (e.g. a ratio): users and items drawn independently with
    replacement, ``[n_boot, rows]`` draw counts of each row's user and of its item (a row
    counts as their product). Resampling one dimension alone (the other's weights set to
    one) gives ``crossed_k`` its two variances."""
    ui, uu = pd.factorize(pd.Series(list(users), dtype=object))
    vi, vv = pd.factorize(pd.Series(list(items), dtype=object))
    rng = np.random.default_rng(seed)
    wu = _draw_counts(rng, len(uu), n_boot)
    wv = _draw_counts(rng, len(vv), n_boot)
    return wu[:, ui], wv[:, vi]


def _draw_counts(rng: np.random.Generator, k: int, n_boot: int) -> np.ndarray:
    """``[n_boot, k]``: how often each of ``k`` units is drawn in each of ``n_boot``
    resamples of ``k`` draws with replacement."""
    drawn = rng.integers(0, k, size=(n_boot, k)) + k * np.arange(n_boot)[:, None]
    return np.bincount(drawn.ravel(), minlength=n_boot * k).reshape(n_boot, k).astype(float)


def direction(
    interval: Sequence[float] | None,
    n: int,
    *,
    higher: str = "higher",
    lower: str = "lower",
    unit: str = "users",
) -> str:
    """The word for a paired difference: ``higher`` / ``lower`` only when its interval
    excludes 0 over at least ``MIN_WORDED`` units; otherwise (or with no interval, below
    ``MIN_CLUSTERS``) "no difference detected (n = ...)"."""
    if interval is not None and n >= MIN_CLUSTERS:
        lo, hi = float(interval[0]), float(interval[1])
        if (lo > 0 or hi < 0) and n < MIN_WORDED:
            return f"not worded: fewer than {MIN_WORDED} {unit} (n = {n})"
        if lo > 0:
            return higher
        if hi < 0:
            return lower
    return f"no difference detected (n = {n} {unit})"


def interval_pvalue(
    mean: float, interval: Sequence[float] | None, level: float = 0.95, *, df: int | None = None
) -> float:
    """Two-sided p-value of "the difference is 0" from an estimate and its ``level`` interval
    (the summary keeps no resamples): the standard error is the interval's half-width on the
    side of 0 over the critical value the interval was built with (Student's t on ``df``
    degrees of freedom, as ``t_interval``; the normal one where ``df`` is None), so
    p < 1 − level exactly when that side of the interval excludes 0, and below that the
    p-value has the t distribution's tails (skewed intervals keep their skew). No interval
    (below ``MIN_CLUSTERS`` units): 1.0, nothing can be rejected."""
    from scipy.special import ndtr, ndtri, stdtr

    if interval is None or mean is None or not np.isfinite(mean) or mean == 0:
        return 1.0
    lo, hi = float(interval[0]), float(interval[1])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 1.0
    half = (mean - lo) if mean > 0 else (hi - mean)
    if half <= 0:  # the estimate at (or past) the interval's edge on 0's side
        return 0.0 if (lo > 0 or hi < 0) else 1.0
    if df is not None and df >= 1:
        t = abs(float(mean)) * float(stdtrit(df, 0.5 + level / 2)) / half
        return float(2 * stdtr(df, -t))
    z = abs(float(mean)) * float(ndtri(0.5 + level / 2)) / half
    return float(2 * ndtr(-z))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: sorted ascending, the i-th
    smallest (0-based) becomes ``max_{j <= i} min(1, (m - j) p_(j))``. Rejecting where the
    adjusted value is below a level controls the family-wise error rate at that level."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled) if m else scaled
    return [float(v) for v in adjusted]
