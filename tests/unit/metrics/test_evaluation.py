"""Preference accuracy, ground-truth utility, bootstrap intervals and MMLU scoring."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ENGINES, assert_close_impl, no_hooks_left
from helpers import PAIRS, _table

import steerlens as sl
from steerlens.data.mmlu import MMLUItem
from steerlens.metrics import (
    bootstrap_interval,
    estimate,
    ground_truth_utility,
    mmlu_accuracy,
    mmlu_by_alpha,
    mmlu_prompt,
    oracle,
    ppa_projection,
    ppa_under_steering,
    toxicity_only,
)

ITEM = MMLUItem(
    question="  What is 2 + 2?  ",
    choices=("3", "4", "5", "22"),
    answer=1,
    subject="high_school_mathematics",
)


def test_mmlu_prompt_is_the_lm_evaluation_harness_string():
    assert mmlu_prompt(ITEM) == (
        "The following are multiple choice questions (with answers) about high school "
        "mathematics.\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_mmlu_scores_the_four_letters_after_the_prompt(tiny, engine):
    items = [ITEM, MMLUItem("Capital of France?", ("Rome", "Paris", "Oslo", "Bern"), 1, "geo")]
    res = mmlu_accuracy(tiny, items, batch_size=2, engine=engine)
    for i, item in enumerate(items):  # log p(" A" | prompt), ..., one answer at a time
        lp = torch.stack(
            [
                sl.continuation_logprobs(tiny, [mmlu_prompt(item)], [f" {x}"], chat=False)[0].sum()
                for x in "ABCD"
            ]
        )
        assert_close_impl(res.logprobs[i], lp)
        assert res.predictions[i] == int(lp.argmax())
    assert res.accuracy == np.mean(res.correct)
    vec = sl.SteeringVector({2: torch.ones(64) * 3})
    with sl.steering(tiny, vec, alpha=[0.0, 4.0]):  # per-row alpha follows its item
        steered = mmlu_accuracy(tiny, items, batch_size=1, engine=engine)
    assert_close_impl(steered.logprobs[0], res.logprobs[0])
    assert not torch.allclose(steered.logprobs[1], res.logprobs[1], atol=1e-3)
    # the prompt is the prefill, the answer " A" the generated part: the same gate means the
    # same as scoring each answer as a continuation
    with sl.steering(tiny, vec, alpha=4.0, gate="generated"):
        gated = mmlu_accuracy(tiny, items, engine=engine)
        ref = [
            torch.stack(
                [
                    sl.continuation_logprobs(tiny, [mmlu_prompt(it)], [f" {x}"], chat=False)[
                        0
                    ].sum()
                    for x in "ABCD"
                ]
            )
            for it in items
        ]
    assert_close_impl(gated.logprobs, torch.stack(ref))
    assert not torch.allclose(gated.logprobs, res.logprobs, atol=1e-3)


MORE = [
    ITEM,
    MMLUItem("Capital of France?", ("Rome", "Paris", "Oslo", "Bern"), 1, "geo"),
    MMLUItem("Which is a mammal? Think of the sea.", ("Shark", "Whale", "Cod", "Eel"), 1, "bio"),
]


@pytest.mark.parametrize("engine", ENGINES)
def test_mmlu_by_alpha_is_a_steered_pass_per_alpha(tiny, engine, monkeypatch):
    from steerlens.core.engines.hf import HFEngine

    calls = {"from": 0}
    real = HFEngine.logits_from

    def counted(self, *a, **kw):
        calls["from"] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(HFEngine, "logits_from", counted)
    g = torch.Generator().manual_seed(5)
    vec = sl.SteeringVector({2: torch.randn(64, generator=g), 3: torch.randn(64, generator=g)})
    got = mmlu_by_alpha(tiny, MORE, vec, [2.0, 0.0, 6.0, 2.0], batch_size=2, engine=engine)
    assert sorted(got) == [0.0, 2.0, 6.0]
    # the steered passes start at block 2 from the unsteered residual on the fast path only
    assert calls["from"] == (4 if engine == "hf" else 0)  # 2 batches x 2 nonzero α
    for a, res in got.items():
        with sl.steering(tiny, vec, alpha=a):
            whole = mmlu_accuracy(tiny, MORE, batch_size=1, engine=engine)
        assert_close_impl(res.logprobs, whole.logprobs)
        assert res.predictions == whole.predictions and res.correct == whole.correct
    assert not torch.allclose(got[6.0].logprobs, got[0.0].logprobs, atol=1e-3)
    # another open block acts on every pass: whole passes under both, never the shortcut
    calls["from"] = 0
    other = sl.SteeringVector({1: torch.randn(64, generator=g)})
    with sl.steering(tiny, other, alpha=3.0):
        inside = mmlu_by_alpha(tiny, MORE, vec, [0.0, 2.0], batch_size=2, engine=engine)
        with sl.steering(tiny, vec, alpha=2.0):
            both = mmlu_accuracy(tiny, MORE, batch_size=2, engine=engine)
    assert calls["from"] == 0
    assert_close_impl(inside[2.0].logprobs, both.logprobs)
    assert no_hooks_left(tiny)
    with pytest.raises(ValueError, match="no α"):
        mmlu_by_alpha(tiny, MORE, vec, [])


def test_ppa_by_projection_equals_the_count_by_hand():
    # two users, three pairs each; differences along unit axes so margins are readable
    e = torch.eye(3)
    diffs = torch.stack([e[0], -e[0], e[1], e[0], e[0], -e[2]]).view(6, 1, 3)
    rejected = torch.zeros(6, 1, 3)
    pa = _table(rejected + diffs, rejected, ["a", "a", "a", "b", "b", "b"], [1.0] * 6)
    v = sl.SteeringVector({0: torch.tensor([1.0, 0.0, 0.0])})
    est = ppa_projection(pa, v, n_boot=200)
    # user a: +1, -1, 0 (tie) -> 1.5/3; user b: +1, +1, 0 (tie) -> 2.5/3
    assert est.per_unit.to_dict() == pytest.approx({"a": 0.5, "b": 2.5 / 3})
    assert est.mean == pytest.approx((0.5 + 2.5 / 3) / 2)
    # two users: the interval is centred on the mean and, on t's 1 df, wider than the two
    # users' values; below MIN_CLUSTERS it is not reported
    assert (est.low + est.high) / 2 == pytest.approx(est.mean)
    assert est.low < 0.5 and est.high > 2.5 / 3 and est.interval is None
    own = {"a": sl.SteeringVector({0: -e[0]}), "b": sl.SteeringVector({0: e[2]})}
    per_user = ppa_projection(pa, own)
    assert per_user.per_unit.to_dict() == pytest.approx({"a": 1.5 / 3, "b": 1.0 / 3})
    with pytest.raises(KeyError, match="no vector for user 'b'"):
        ppa_projection(pa, {"a": own["a"]})


def test_bootstrap_is_seeded_and_covers_the_mean():
    x = np.random.default_rng(0).random(40)
    a = bootstrap_interval(x, seed=3)
    assert a == bootstrap_interval(x, seed=3)
    se = x.std(ddof=1) / math.sqrt(x.size)  # the normal approximation agrees within 0.02
    assert a == pytest.approx((x.mean() - 1.96 * se, x.mean() + 1.96 * se), abs=0.02)
    assert all(math.isnan(v) for v in bootstrap_interval([]))
    est = estimate([1, 0, 1, 1], ["u", "u", "v", "v"])
    assert est.per_unit.to_dict() == {"u": 0.5, "v": 1.0} and est.n == 2


def test_toxicity_only_learns_the_direction_from_training_pairs():
    from helpers import _pair

    tox = {"nice": 0.1, "rude": 0.9, "mild": 0.3, "harsh": 0.7}
    scorer = lambda texts: [tox[t] for t in texts]  # noqa: E731
    train = [_pair("u", "q", "nice", "rude", 10, 0), _pair("u", "q", "mild", "harsh", 10, 1)]
    test = [_pair("u", "q", "mild", "rude", 10, 2), _pair("v", "q", "harsh", "nice", 10, 3)]
    est = toxicity_only(test, train, scorer)
    assert est.per_unit.to_dict() == {"u": 1.0, "v": 0.0}  # "less toxic wins" learned


def test_ground_truth_utility_and_oracle_by_hand():
    from helpers import _pair

    gt = {
        "attribute_mean": {
            a: 0.0 for a in ("toxicity", "refusal", "caution", "length", "formality")
        },
        "attribute_std": {
            a: 1.0 for a in ("toxicity", "refusal", "caution", "length", "formality")
        },
        "users": {"u": {"weights": {"toxicity": -2.0, "length": 0.5}}},
    }
    scorer = lambda texts: [0.25 for _ in texts]  # noqa: E731
    (u,) = ground_truth_utility(["three short words"], ["u"], gt, scorer)
    assert u == pytest.approx(-2.0 * 0.25 + 0.5 * 3)
    test = [_pair("u", "q", "a much longer answer here", "short", 5, 0)]
    assert oracle(test, gt, scorer).mean == 1.0
    with pytest.raises(ValueError, match=r"ground_truth\.json"):
        ground_truth_utility(["x"], ["u"], {}, scorer)


def test_ppa_under_steering_uses_each_users_vector_in_one_batch(tiny):
    g = torch.Generator().manual_seed(4)
    vecs = {
        "u1": sl.SteeringVector({2: torch.randn(64, generator=g)}),
        "u2": sl.SteeringVector({3: torch.randn(64, generator=g)}),
    }
    est = ppa_under_steering(tiny, PAIRS, vecs, alpha=4.0, batch_size=2, n_boot=100)
    assert set(est.per_unit.index) == {"u1", "u2"}
    # each pair scored alone with its own user's vector gives the same verdicts
    from steerlens.metrics.preference import unsteered_margins

    verdicts = []
    for p in PAIRS:
        base = unsteered_margins(tiny, [p], 1)
        with sl.steering(tiny, vecs[p.user_id], alpha=4.0):
            steered = unsteered_margins(tiny, [p], 1)
        verdicts.append(float(steered[0] > base[0]))
    expected = pd.Series(verdicts, index=[p.user_id for p in PAIRS]).groupby(level=0).mean()
    assert est.per_unit.to_dict() == expected.to_dict()
    assert sl.evaluation.CHANCE == 0.5
    # unsteered margins computed once and handed in: the same arithmetic, the same estimate
    base = unsteered_margins(tiny, PAIRS, batch_size=2)
    again = ppa_under_steering(
        tiny, PAIRS, vecs, alpha=4.0, batch_size=2, n_boot=100, base_margins=base
    )
    assert again.per_unit.to_dict() == est.per_unit.to_dict() and again.mean == est.mean
    high = ppa_under_steering(tiny, PAIRS, vecs, alpha=4.0, n_boot=100, base_margins=base + 1e6)
    assert high.mean == 0.0  # the margins handed in are the ones compared against
    with pytest.raises(ValueError, match="base margins"):
        ppa_under_steering(tiny, PAIRS, vecs, alpha=4.0, base_margins=base[:1])


def test_steering_pairs_are_spread_over_users():
    from types import SimpleNamespace

    from steerlens.experiments.personalization import PersonalizationConfig, _per_user_sample

    pairs = [SimpleNamespace(user_id=u, i=i) for u in "abc" for i in range(5)]
    got = _per_user_sample(pairs, 7)
    assert [p.user_id for p in got] == ["a", "b", "c", "a", "b", "c", "a"]
    assert len(_per_user_sample(pairs, 100)) == 15
    with pytest.raises(ValueError, match="held_out"):
        PersonalizationConfig(held_out=1.5)


def test_paired_difference_and_nan_margins():
    from steerlens.metrics import score_predictions
    from steerlens.metrics.stats import paired_difference

    a = estimate([1, 1, 0, 1], ["u", "u", "v", "v"])
    b = estimate([0, 1, 0, 0, 1], ["u", "u", "v", "v", "w"])
    d = paired_difference(a, b, n_boot=200)
    assert d.per_unit.to_dict() == {"u": 0.5, "v": 0.5} and d.mean == 0.5
    est = score_predictions([1.0, float("nan"), -1.0], ["u", "u", "v"])
    assert est.per_unit.to_dict() == {"u": 1.0, "v": 0.0}  # the NaN pair is left out
