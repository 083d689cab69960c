"""The intervals cover at the smallest n they are worded at (``MIN_CLUSTERS`` units).

Null simulations with fixed seeds: data whose true mean is known, drawn at the minimum n, and
the share of replications whose interval holds it. A percentile bootstrap covered 0.85 here
(one-stage, normal, n = 5) and 0.88 (two-stage, 6 users x 7 prompts); a users-only bootstrap
of a crossed users x items design ignores the items' variance. Each design must cover at
least 0.93 of its replications (nominal 0.95; the margin is the Monte Carlo error of a few
hundred replications and the bootstrap's own noise at a small ``n_boot``).
"""

from __future__ import annotations

import numpy as np
import pytest

from steerlens.metrics.stats import (
    MIN_CLUSTERS,
    bootstrap_interval,
    cluster_estimate,
    crossed_estimate,
    estimate,
    paired_difference,
)

N_BOOT = 300
FLOOR = 0.93


def _covers(low: float, high: float, truth: float) -> bool:
    return bool(low <= truth <= high)


@pytest.mark.parametrize(
    ("name", "draw", "truth"),
    [
        ("normal", lambda rng, size: rng.normal(0.0, 1.0, size), 0.0),
        # skewness 0.5 (the skewness of a gamma with shape 16)
        ("mildly skewed", lambda rng, size: rng.gamma(16.0, 1.0, size), 16.0),
    ],
)
def test_one_stage_interval_covers_at_the_minimum_n(name, draw, truth):
    rng = np.random.default_rng(11)
    reps = 5000
    data = draw(rng, (reps, MIN_CLUSTERS))
    hits = [
        _covers(*bootstrap_interval(x, n_boot=N_BOOT, seed=r), truth) for r, x in enumerate(data)
    ]
    assert np.mean(hits) >= FLOOR, name


def test_estimate_and_paired_difference_cover_at_the_minimum_n():
    rng = np.random.default_rng(12)
    users = [f"u{i}" for i in range(MIN_CLUSTERS)]
    hits = []
    for r in range(600):
        user_effect = rng.normal(0.0, 1.0, MIN_CLUSTERS)  # shared by both arms: paired
        a = estimate(list(user_effect + rng.normal(0.0, 0.5, MIN_CLUSTERS)), users)
        b = estimate(list(user_effect + rng.normal(0.0, 0.5, MIN_CLUSTERS)), users)
        d = paired_difference(a, b, n_boot=N_BOOT, seed=r)
        hits.append(_covers(d.low, d.high, 0.0))
    assert np.mean(hits) >= FLOOR


@pytest.mark.parametrize("n_users", [MIN_CLUSTERS, MIN_CLUSTERS + 1])
def test_two_stage_interval_covers_at_the_minimum_n(n_users):
    rng = np.random.default_rng(13 + n_users)
    prompts = 7
    users = np.repeat([f"u{i}" for i in range(n_users)], prompts)
    reps = 600
    # a user random effect (the same size as the prompts' noise) around a true mean of 0
    y = np.repeat(rng.normal(0.0, 1.0, (reps, n_users)), prompts, axis=1)
    y += rng.normal(0.0, 1.0, (reps, n_users * prompts))
    hits = []
    for r in range(reps):
        e = cluster_estimate(y[r], users, n_boot=N_BOOT, seed=r)
        assert e.n == n_users
        hits.append(_covers(e.low, e.high, 0.0))
    assert np.mean(hits) >= FLOOR


def test_two_stage_percentage_change_covers_at_the_minimum_n():
    rng = np.random.default_rng(14)
    n_users, prompts, reps = MIN_CLUSTERS + 1, 7, 500
    users = np.repeat([f"u{i}" for i in range(n_users)], prompts)
    # the unsteered error varies by user and prompt; steering leaves it unchanged on average
    base = 5.0 + np.repeat(rng.normal(0.0, 1.0, (reps, n_users)), prompts, axis=1)
    base += rng.normal(0.0, 1.0, base.shape)
    steered = base + np.repeat(rng.normal(0.0, 0.5, (reps, n_users)), prompts, axis=1)
    steered += rng.normal(0.0, 0.5, base.shape)
    hits = []
    for r in range(reps):
        e = cluster_estimate(steered[r], users, base=base[r], n_boot=N_BOOT, seed=r)
        hits.append(_covers(e.low, e.high, 0.0))
    assert np.mean(hits) >= FLOOR


@pytest.mark.parametrize("n_users", [MIN_CLUSTERS, MIN_CLUSTERS + 1])
def test_crossed_interval_covers_at_the_minimum_n(n_users):
    rng = np.random.default_rng(15 + n_users)
    n_items, reps = 8, 600
    users = np.repeat(np.arange(n_users), n_items)
    items = np.tile(np.arange(n_items), n_users)
    # y_ij = u_i + v_j + e_ij: users and items both vary, around a true mean of 0
    y = rng.normal(0.0, 1.0, (reps, n_users))[:, users]
    y += rng.normal(0.0, 1.0, (reps, n_items))[:, items]
    y += rng.normal(0.0, 1.0, (reps, n_users * n_items))
    hits = []
    for r in range(reps):
        e = crossed_estimate(y[r], users, items, n_boot=N_BOOT, seed=r)
        assert e.n == n_users
        hits.append(_covers(e.low, e.high, 0.0))
    assert np.mean(hits) >= FLOOR


def test_crossed_interval_holds_the_items_variance_that_users_alone_miss():
    # many users over the same few texts (the held-out KL's design): resampling users alone
    # treats the 8 texts as fixed and is too narrow; crossing them is not
    rng = np.random.default_rng(17)
    n_users, n_items = 32, 8
    users = np.repeat(np.arange(n_users), n_items)
    items = np.tile(np.arange(n_items), n_users)
    y = rng.normal(0.0, 0.3, n_users)[users] + rng.normal(0.0, 1.0, n_items)[items]
    y += rng.normal(0.0, 0.3, users.size)
    crossed = crossed_estimate(y, users, items, n_boot=N_BOOT, seed=0)
    by_user = cluster_estimate(y, users, n_boot=N_BOOT, seed=0)
    assert crossed.mean == pytest.approx(by_user.mean)
    assert (crossed.high - crossed.low) > 2.0 * (by_user.high - by_user.low)
