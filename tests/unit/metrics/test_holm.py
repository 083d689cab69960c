"""Holm's step-down adjustment and the p-value a summary's interval implies."""

from __future__ import annotations

import numpy as np
import pytest

from steerlens.metrics.stats import holm, interval_pvalue


def test_holm_steps_down_in_input_order_and_stays_monotone():
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4 * 0.01, 3 * 0.03, max(0.09, 2 * 0.04), 0.5
    assert holm([0.04, 0.01, 0.5, 0.03]) == pytest.approx([0.09, 0.04, 0.5, 0.09])
    assert holm([0.2]) == [0.2]  # a family of one: unadjusted
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []
    rng = np.random.default_rng(0)
    p = rng.random(12)
    adj = np.array(holm(p))
    assert (adj >= p).all() and (adj <= 1).all()
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= 0).all()  # adjusted p-values keep the raw order
    # Bonferroni bounds Holm from above
    assert (adj <= np.minimum(1, len(p) * p) + 1e-12).all()


def test_interval_pvalue_is_below_the_level_exactly_when_the_interval_excludes_0():
    assert interval_pvalue(0.1, [0.02, 0.18]) < 0.05
    assert interval_pvalue(-0.063, [-0.13, -0.014]) < 0.05
    assert interval_pvalue(0.05, [-0.01, 0.1]) > 0.05
    assert interval_pvalue(0.1, [0.0, 0.2]) == pytest.approx(0.05, abs=1e-9)  # at the edge
    # the half-width on 0's side sets the scale: a long tail away from 0 does not help
    assert interval_pvalue(5.0, [-0.1, 28.0]) > 0.05
    # a normal estimate: mean 1.96 standard errors from 0 -> p = 0.05
    assert interval_pvalue(1.96, [0.0, 3.92]) == pytest.approx(0.05, rel=1e-3)
    # no interval (too few units), no estimate or a zero estimate: nothing to reject
    assert interval_pvalue(0.3, None) == 1.0
    assert interval_pvalue(0.0, [-0.1, 0.1]) == 1.0
    assert interval_pvalue(float("nan"), [0.1, 0.2]) == 1.0
