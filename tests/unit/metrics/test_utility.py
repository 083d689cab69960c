"""The simulated users' keyword-density utility cannot be won by collapse or keyword
stuffing: z-scores are bounded, and a degenerate or empty output never counts as a gain."""

from __future__ import annotations

import json
import math
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from steerlens.metrics.preference import Z_BOUND, ground_truth_utility, oracle, utility_gain
from steerlens.metrics.summaries import (
    degenerate_flags,
    degenerate_share,
    dose_response_table,
    utility_gains,
)
from steerlens.metrics.text import degenerate

ATTRS = ("toxicity", "refusal", "caution", "length", "formality")
STUFFED = [
    "safe " * 30,
    "damn " * 30,
    "please " * 30,
    "careful " * 30,
    "lol " * 30,
    "consult a professional " * 10,
    "I'm sorry, but " * 10,
    "",
    "   ",
]
SENSIBLE = (
    "A good way to start is to set a small daily goal, write down what you did each day, "
    "and look back at the end of the week to see which habits stuck and which did not."
)


def _shipped() -> dict:
    """The shipped simulated set's ground truth, read now (it is regenerated at times)."""
    path = resources.files("steerlens") / "data" / "demo" / "ground_truth.json"
    return json.loads(path.read_text())


def _one_user_per_group(gt: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for user, entry in sorted(gt["users"].items()):
        out.setdefault(entry["group"], user)
    return out


def test_keyword_stuffing_never_beats_a_sensible_answer_for_any_group():
    gt = _shipped()
    users = _one_user_per_group(gt)
    assert len(users) >= 2  # several groups of users, each checked
    assert not degenerate([SENSIBLE])[0]
    assert all(degenerate(STUFFED))  # collapsed or empty, as the sweep rows flag them
    for group, user in users.items():
        weights = gt["users"][user]["weights"]
        ceiling = Z_BOUND * sum(abs(w) for w in weights.values())
        sensible = ground_truth_utility([SENSIBLE] * len(STUFFED), [user] * len(STUFFED), gt)
        stuffed = ground_truth_utility(STUFFED, [user] * len(STUFFED), gt)
        assert all(abs(u) <= ceiling + 1e-9 for u in stuffed), group
        gains = utility_gain(stuffed, sensible, degenerate(STUFFED))
        assert (gains <= 0).all(), (group, dict(zip(STUFFED, gains, strict=True)))
        # the floor is one-sided: a sensible answer in place of a collapsed one is a gain
        back = utility_gain(sensible, stuffed, degenerate([SENSIBLE] * len(STUFFED)))
        raw = np.subtract(sensible, stuffed)
        assert back == pytest.approx(raw), group


def _toy_gt(weights: dict[str, float]) -> dict:
    return {
        "attribute_mean": dict.fromkeys(ATTRS, 0.0),
        "attribute_std": dict.fromkeys(ATTRS, 1.0),
        "users": {"u": {"group": "g", "weights": weights}},
    }


def test_each_z_score_is_clipped_to_the_bound():
    gt = _toy_gt({"length": 1.0, "toxicity": -1.0})
    long = " ".join(["word"] * 500)
    tox = lambda texts: [10.0 for _ in texts]  # noqa: E731  (z = 10)
    (u,) = ground_truth_utility([long], ["u"], gt, tox)
    assert u == pytest.approx(Z_BOUND - Z_BOUND)
    (raw,) = ground_truth_utility([long], ["u"], gt, tox, bound=None)
    assert raw == pytest.approx(500 - 10)
    (two,) = ground_truth_utility([long], ["u"], gt, tox, bound=2.0)
    assert two == pytest.approx(0.0)
    gt1 = _toy_gt({"length": 1.0})
    (short,) = ground_truth_utility(["two words"], ["u"], gt1, tox)
    assert short == pytest.approx(2.0)  # within the bound: the simulator's own utility
    # the oracle is the simulator's utility, unclipped (the pairs were drawn with it)
    from helpers import _pair

    test = [_pair("u", "q", long, "a b c d", 5, 0)]
    assert oracle(test, gt1, tox).mean == 1.0


def test_utility_gain_floors_degenerate_rows_only():
    got = utility_gain([2.0, 2.0, -1.0, math.nan], [0.5, 0.5, 0.0, 0.0], [True, False, True, True])
    assert got[:3].tolist() == [0.0, 1.5, -1.0] and math.isnan(got[3])
    assert utility_gain([1.0], [0.0], [False]).tolist() == [1.0]
    with pytest.raises(ValueError, match="degenerate flags"):
        utility_gain([1.0, 2.0], [0.0, 0.0], [True])


def _cells() -> pd.DataFrame:
    """Two users' prompts, unsteered and at α 1: p0's steered output collapsed (utility +5,
    a keyword-stuffing win before the floor), p1 empty, p2 and p3 fine."""
    rows = []
    for i, (u, deg, empty, util) in enumerate(
        [("a", True, False, 5.0), ("a", False, True, 1.0), ("b", False, False, 0.5),
         ("b", False, False, -0.5)]
    ):  # fmt: skip
        base = {"prompt_id": f"p{i}", "user": u, "gate": "all", "abs_error": 0.1}
        extra = {"toxicity": 0.1, "perplexity": 2.0, "generation": "x y z"}
        rows.append({**base, **extra, "method": "none", "alpha": 0.0, "degenerate": False,
                     "empty": False, "utility": 0.0})  # fmt: skip
        rows.append({**base, **extra, "method": "m", "alpha": 1.0, "degenerate": deg,
                     "empty": empty, "utility": util})  # fmt: skip
    return pd.DataFrame(rows)


def test_sweep_gains_are_floored_and_carry_the_degenerate_share():
    cells = _cells()
    steered = cells[cells["method"] == "m"]
    base = cells[cells["method"] == "none"].set_index("prompt_id")["utility"]
    assert degenerate_flags(steered).tolist() == [True, True, False, False]
    assert degenerate_share(steered) == 0.5
    assert degenerate_share(steered.iloc[:0]) != degenerate_share(steered.iloc[:0])  # NaN
    assert utility_gains(steered, base).tolist() == [0.0, 0.0, 0.5, -0.5]
    table = dose_response_table(cells, n_boot=50)
    row = table[table["alpha"] == 1.0].iloc[0]
    assert row["degenerate_share"] == 0.5
    # per user: a (0 + 0) / 2, b (0.5 - 0.5) / 2: no gain; unfloored it would be +1.5
    assert row["utility_gain"] == pytest.approx(0.0)
