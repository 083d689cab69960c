"""Two-stage bootstrap, withheld intervals and the wording rule of comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from steerlens.metrics.stats import (
    MIN_CLUSTERS,
    cluster_estimate,
    cluster_resamples,
    direction,
    reported,
)


def test_cluster_resamples_draw_whole_clusters_then_rows_within_them():
    clusters = ["a"] * 3 + ["b"] * 1 + ["c"] * 2
    label = np.array(clusters)
    sizes = {"a": 3, "b": 1, "c": 2}
    for idx in cluster_resamples(clusters, n_boot=200, seed=1):
        drawn = label[idx]
        # a drawn cluster brings as many rows as it has: each label's count is a multiple of
        # its cluster's size, and three clusters are drawn in all
        assert all(int((drawn == c).sum()) % k == 0 for c, k in sizes.items())
        assert sum(int((drawn == c).sum()) // k for c, k in sizes.items()) == 3
    # every cluster drawn 3 times on average over many resamples; rows only from their cluster
    counts = {"a": 0, "b": 0, "c": 0}
    for idx in cluster_resamples(clusters, n_boot=3000, seed=0):
        for c in counts:
            counts[c] += int((label[idx] == c).sum())
    per_draw = {c: counts[c] / 3000 for c in counts}
    assert per_draw["a"] == pytest.approx(3.0, rel=0.08)  # 1 draw x 3 rows
    assert per_draw["b"] == pytest.approx(1.0, rel=0.08)
    assert per_draw["c"] == pytest.approx(2.0, rel=0.08)


def test_two_stage_interval_is_wider_than_rows_when_clusters_vary():
    rng = np.random.default_rng(0)
    users = np.repeat([f"u{i}" for i in range(8)], 10)
    effect = np.repeat(rng.normal(0, 1, 8), 10)  # users differ; prompts within a user agree
    values = effect + rng.normal(0, 0.05, users.size)
    clustered = cluster_estimate(values, users, seed=0)
    naive = cluster_estimate(values, [str(i) for i in range(values.size)], seed=0)
    assert clustered.n == 8 and naive.n == 80
    assert clustered.mean == pytest.approx(values.mean())
    # treating the 80 rows as independent understates the uncertainty by about sqrt(10)
    assert (clustered.high - clustered.low) > 2.0 * (naive.high - naive.low)


def test_percentage_change_is_paired_on_the_same_rows():
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    steered = base * 0.5
    e = cluster_estimate(steered, list("abcdef"), base=base, seed=0)
    assert e.mean == pytest.approx(-50.0)
    assert e.low == pytest.approx(-50.0) and e.high == pytest.approx(-50.0)


def test_intervals_are_withheld_below_min_clusters():
    few = cluster_estimate([0.1, 0.2, 0.3, 0.4], ["a", "b", "c", "d"], seed=0)
    assert few.n == MIN_CLUSTERS - 1 and few.interval is None
    assert few.reported("user") == {"mean": 0.25, "interval": None, "n": 4, "unit": "user"}
    enough = cluster_estimate([0.1, 0.2, 0.3, 0.4, 0.5], list("abcde"), seed=0)
    assert enough.interval is not None and enough.reported("user")["n"] == 5
    assert reported(0.5, 0.1, 0.9, 5, "user")["interval"] == [0.1, 0.9]
    assert reported(0.5, float("nan"), 0.9, 9, "user")["interval"] is None


@pytest.mark.parametrize(
    ("interval", "n", "word"),
    [
        ([0.01, 0.2], 12, "higher"),
        ([-0.3, -0.02], 12, "lower"),
        ([0.01, 0.2], 6, "not worded: fewer than 10 users (n = 6)"),  # too few to word
        ([-0.01, 0.2], 6, "no difference detected (n = 6 users)"),
        ([0.0, 0.04], 6, "no difference detected (n = 6 users)"),  # touching 0 is not excluding
        ([0.01, 0.2], 3, "no difference detected (n = 3 users)"),  # too few units to say
        (None, 12, "no difference detected (n = 12 users)"),
    ],
)
def test_direction_says_higher_or_lower_only_when_the_interval_excludes_zero(interval, n, word):
    assert direction(interval, n) == word


def test_t_interval_is_the_bootstrap_se_with_t_critical_values():
    from steerlens.metrics.stats import bootstrap_interval, t_interval

    boots = np.array([-1.0, 1.0])  # sd 1.414..., so se = sqrt(2) * sqrt(5 / 4)
    lo, hi = t_interval(0.5, boots, 5)
    assert (lo + hi) / 2 == pytest.approx(0.5)
    assert (hi - lo) / 2 == pytest.approx(2.776445 * np.sqrt(2.0) * np.sqrt(5 / 4), rel=1e-5)
    assert all(np.isnan(t_interval(0.5, boots, 1))) and all(np.isnan(t_interval(0.5, [1.0], 5)))
    with pytest.raises(ValueError, match="level"):
        t_interval(0.5, boots, 5, level=1.5)
    # a mean's bootstrap SE, corrected, is the sample SE: the interval is Student's t interval
    x = np.random.default_rng(2).normal(size=6)
    lo, hi = bootstrap_interval(x, n_boot=20000, seed=0)
    half = 2.570582 * x.std(ddof=1) / np.sqrt(x.size)
    assert (lo, hi) == pytest.approx((x.mean() - half, x.mean() + half), rel=0.03, abs=0.02)


def test_crossed_estimate_resamples_users_and_items():
    from steerlens.metrics.stats import crossed_estimate

    users = np.repeat(list("abcdef"), 5)
    items = np.tile(["t0", "t1", "t2", "t3", "t4"], 6)
    values = np.arange(30, dtype=float)
    values[4] = np.nan  # a missing cell: the mean is over the rows there are
    e = crossed_estimate(values, users, items, n_boot=200, seed=0)
    assert e.mean == pytest.approx(np.nanmean(values)) and e.n == 6
    assert e.per_unit["a"] == pytest.approx(1.5) and e.per_unit["b"] == pytest.approx(7.0)
    assert e.low < e.mean < e.high and e.interval is not None
    again = crossed_estimate(values, users, items, n_boot=200, seed=0)
    assert (again.low, again.high) == (e.low, e.high)  # seeded
    # one item: nothing varies over items, and users alone give the interval's df
    one = crossed_estimate(values[1::5], users[1::5], items[1::5], n_boot=200, seed=0)
    assert one.n == 6 and np.isfinite(one.low)
    few = crossed_estimate(values[:20], users[:20], items[:20], n_boot=200, seed=0)
    assert few.n == MIN_CLUSTERS - 1 and few.interval is None
    # 2-4 items vary but are too few to say how: no interval either
    four = crossed_estimate(values[items != "t4"], users[items != "t4"], items[items != "t4"])
    assert four.n == 6 and four.interval is None
    with pytest.raises(ValueError, match="values for"):
        crossed_estimate(values, users[:3], items)
