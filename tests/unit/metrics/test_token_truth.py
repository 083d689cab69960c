"""Planted-truth scoring of token selections: labels from character spans, exact PR."""

from __future__ import annotations

import dataclasses
import math
import types

import pandas as pd
import pytest
import torch

import steerlens as sl
from steerlens.metrics.token_truth import (
    ESTIMATORS,
    estimator_scores,
    planted_labels,
    pr_curve,
    user_queries,
)
from steerlens.steerx import TokenEffects


def _effects(offsets, p_with, p_without):
    n = len(offsets)
    return TokenEffects(
        "x" * offsets[-1][1],
        torch.arange(n),
        ["t"] * n,
        offsets,
        torch.tensor(p_with).log(),
        torch.tensor(p_without).log(),
    )


def test_planted_labels_use_character_overlap():
    eff = _effects([(0, 5), (5, 9), (9, 15)], [0.5] * 3, [0.5] * 3)
    assert planted_labels(eff, [(3, 6, "toxicity")]) == ["toxicity", "toxicity", ""]
    assert planted_labels(eff, [(15, 20, "refusal")]) == ["", "", ""]  # touching is not overlap


def test_pr_curve_counts_exactly():
    tokens = pd.DataFrame(
        {
            "planted": [True, True, False, False],
            "group": ["a", "a", "b", "b"],
            **{k: [0.3, 0.01, 0.2, -0.1] for k in ESTIMATORS},
        }
    )
    curve = pr_curve(tokens, {"none · p-diff": [0.05, 0.5]})
    at = curve.set_index("threshold")
    assert at.loc[0.05, "precision"] == 0.5 and at.loc[0.05, "recall"] == 0.5
    assert at.loc[0.05, "selected"] == 2
    assert math.isnan(at.loc[0.5, "precision"]) and at.loc[0.5, "recall"] == 0.0
    by = pr_curve(tokens, {"none · p-diff": [0.05]}, by="group")
    assert set(by["subset"]) == {"a", "b"}
    assert by.set_index("subset").loc["b", "precision"] == 0.0


def test_user_queries_and_estimators_on_the_simulated_set():
    ds = sl.data.load_prism("demo")
    qs = user_queries(ds, n_history=2, targets_per_user=2, users=sorted(ds.users)[:3])
    assert len(qs) == 6
    q = qs[0]
    assert len(q.history) == 4 and len(q.placebo) == 4  # two conversations, two messages each
    assert q.response not in [m["content"] for m in q.history]  # the target is held out
    assert q.placebo != q.history and q.group in {"majority", "more_caution", "less_caution"}
    # one history per user, none of its targets in it; the placebo is the next user's history
    for a, b in (qs[0:2], qs[2:4], qs[4:6]):
        assert a.user_id == b.user_id and a.history == b.history and a.response != b.response
        assert not {a.response, b.response} & {m["content"] for m in a.history}
    assert qs[0].placebo == qs[2].history and qs[4].placebo == qs[0].history
    # every conversation a target: no history left, the user is left out (not scored at 0)
    assert user_queries(ds, targets_per_user=100, users=sorted(ds.users)[:2]) == []
    # no history asked for: every conversation a target (the CLI lists a user's this way)
    every = user_queries(ds, n_history=0, targets_per_user=100, users=sorted(ds.users)[:1])
    assert len(every) > 2 and all(q.history == () and q.placebo == () for q in every)
    assert any(q.spans for q in qs)
    e0 = _effects([(0, 3), (3, 6)], [0.6, 0.2], [0.5, 0.3])
    e1 = _effects([(0, 3), (3, 6)], [0.6, 0.2], [0.55, 0.1])
    fake = dataclasses.replace(q, spans=((0, 2, "toxicity"),))
    table = estimator_scores([fake], [e0], [e1])
    assert list(table["planted"]) == [True, False]
    assert table["none · p-diff"].tolist() == pytest.approx([0.1, -0.1])
    assert table["none & placebo · p-diff"].tolist() == pytest.approx([0.05, -0.1])
    with pytest.raises(ValueError, match="ground truth"):
        user_queries(dataclasses.replace(ds, ground_truth=None))
    # plain data (lists, no SteerX object) gives the same table
    plain = [
        types.SimpleNamespace(
            tokens=e.tokens,
            offsets=e.offsets,
            effect=e.effect.tolist(),
            log_ratio=e.log_ratio.tolist(),
        )
        for e in (e0, e1)
    ]
    pd.testing.assert_frame_equal(estimator_scores([fake], [plain[0]], [plain[1]]), table)


def test_completed_truth_adds_the_measured_words_and_only_those():
    """The completed truth adds every word the attribute measures count (what the simulated
    utility rewards) and nothing else: no span for a style that plants nothing."""
    from steerlens.metrics.token_truth import response_spans

    direct = {"text": "Sure. Please be careful, dude.", "spans": []}
    assert response_spans(direct) == []
    done = response_spans(direct, "completed")
    words = {direct["text"][a:b]: attr for a, b, attr in done}
    assert words == {"Please": "caution", "careful": "caution", "dude": "informality"}
    plain = {"text": "The capital is Canberra.", "spans": []}
    assert response_spans(plain, "completed") == []
    with pytest.raises(ValueError, match="truth"):
        response_spans(direct, "vibes")  # type: ignore[arg-type]


def test_description_hit_names_the_group():
    from steerlens.experiments.steerx_study import description_hit

    assert description_hit("The user prefers careful answers and safety advice.", "more_caution")
    assert not description_hit("The user prefers careful answers.", "less_caution")
    assert description_hit('The user\'s own texts stress: "Damn"; "honestly".', "less_caution")
    assert not description_hit("No preference-driven tokens were found.", "majority")


def test_the_operating_point_is_chosen_on_half_the_users_and_scored_on_the_other():
    import pandas as pd

    from steerlens.experiments.token_effects import score_tokens
    from steerlens.metrics.token_truth import ESTIMATORS

    # users a, c (tuning half) have a clean signal at 0.2; users b, d (scored half) do not
    rows = []
    for user, good in (("a", True), ("b", False), ("c", True), ("d", False)):
        for i in range(10):
            planted = i < 5
            score = (0.3 if planted else 0.0) if good else 0.3 * (i % 2)
            rows.append(
                {
                    "user": user,
                    "group": "g",
                    "token": "t",
                    "attribute": "x" if planted else "",
                    "planted": planted,
                    **{e: score for e in ESTIMATORS},
                }
            )
    tokens = pd.DataFrame(rows)
    out = score_tokens(tokens, min_recall=0.5)
    assert out["chosen_on_selection"]["precision"] == 1.0  # perfect on a and c
    # but b and d are scored: their odd tokens score 0.3, and 2 of those 5 are planted
    assert out["report"]["precision"]["mean"] == pytest.approx(0.4)
    assert out["baseline"]["recall"]["mean"] == pytest.approx(0.4)  # p-diff > 0.05: 2 of 5
    assert out["report"]["precision"]["n"] == 2 and out["report"]["precision"]["interval"] is None
    assert out["n_select_users"] == out["n_report_users"] == 2
    # a split column the study wrote wins over the every-other-user default
    flipped = tokens.assign(split=["report" if u in "ac" else "select" for u in tokens["user"]])
    out = score_tokens(flipped, min_recall=0.5)
    # chosen on b and d (at recall >= 0.5 only "everything" qualifies there), scored on a, c
    assert out["chosen_on_selection"]["recall"] == 1.0
    assert out["report"]["precision"]["mean"] == pytest.approx(0.5)


def _positional_tokens(split_of: dict[str, str]) -> pd.DataFrame:
    from steerlens.metrics.token_truth import ESTIMATORS

    rows = []
    for user, side in split_of.items():
        for i in range(10):
            planted = i < 3  # the truth sits at the head of every response
            rows.append(
                {
                    "user": user,
                    "group": "g",
                    "position": i,
                    "token": "t",
                    "attribute": "x" if planted else "",
                    "planted": planted,
                    "split": side,
                    # effect estimators see planted tokens only half the time
                    **{e: 0.3 if planted and i % 2 == 0 else 0.3 * (i == 7) for e in ESTIMATORS},
                }
            )
    return pd.DataFrame(rows)


def test_every_rule_is_tuned_on_the_selection_side_beside_its_baselines():
    """The position-only rule, the placebo-controlled estimator, NextQuill's score (tuned and
    as published) and the base rate are all scored on the report side beside the chosen
    rule; on a truth that sits at the head of every response the position rule wins, as a
    baseline must be able to."""
    from steerlens.experiments.token_effects import RULE_LABELS, score_tokens

    tokens = _positional_tokens({u: "select" if u in "ac" else "report" for u in "abcd"})
    out = score_tokens(tokens, min_recall=0.5)
    rules = out["rules"]
    assert set(rules) == set(RULE_LABELS)
    assert rules["position"]["k"] in (2, 3)  # tuned on a, c: precision 1 at recall >= 0.5
    assert rules["position"]["precision"]["mean"] == pytest.approx(1.0)
    assert rules["base_rate"]["precision"]["mean"] == pytest.approx(0.3)
    assert rules["base_rate"]["recall"]["mean"] == pytest.approx(1.0)
    assert rules["placebo"]["estimator"] in ("placebo · p-diff", "placebo · log-ratio")
    from steerlens.experiments.token_effects import SELECTION_ESTIMATORS

    # the chosen rule is never a baseline under another name
    assert rules["chosen"]["estimator"] in SELECTION_ESTIMATORS
    assert rules["nextquill"]["estimator"] not in SELECTION_ESTIMATORS
    assert rules["nextquill_published"]["threshold"] == 0.05
    chosen = rules["chosen"]["precision"]["mean"]
    for name, row in rules.items():
        if name != "chosen":  # paired difference chosen − rule, at the point estimate
            assert row["precision_minus"]["mean"] == pytest.approx(
                chosen - row["precision"]["mean"], abs=1e-5
            )
    assert "precision_minus" not in rules["chosen"]


def test_position_rule_on_the_shipped_set_scores_at_the_base_rate():
    """On the shipped simulated set the cues sit at varied positions: the first-k-words rule,
    k tuned on half the users (best precision at recall >= 0.5), scores within 0.05 of the
    base rate on the other half. Words stand in for tokens (no model needed); in model tokens
    the study's own position row is the check (the full study measured it 0.08 below the base
    rate: CHANGELOG 2026-12-06, issue 32)."""
    import re

    import numpy as np

    ds = sl.data.load_prism("demo")
    gt = ds.ground_truth
    users = sorted(ds.users)
    side = {u: i % 2 for i, u in enumerate(users)}
    by_text = {r["text"]: r for r in gt["responses"].values()}
    pos: list[list[int]] = [[], []]
    lab: list[list[bool]] = [[], []]
    for p in ds.preference_pairs(turn0_only=True):
        r = by_text[p.chosen]
        for i, m in enumerate(re.finditer(r"\S+", r["text"])):
            pos[side[p.user_id]].append(i)
            lab[side[p.user_id]].append(
                any(m.start() < s["end"] and m.end() > s["start"] for s in r["spans"])
            )
    sel_pos, sel_lab = np.array(pos[0]), np.array(lab[0])
    best_k, best_p = None, -1.0
    for k in range(1, int(sel_pos.max()) + 2):
        chosen = sel_pos < k
        recall = (chosen & sel_lab).sum() / sel_lab.sum()
        precision = (chosen & sel_lab).sum() / chosen.sum()
        if recall >= 0.5 and precision > best_p:
            best_k, best_p = k, precision
    rep_pos, rep_lab = np.array(pos[1]), np.array(lab[1])
    base = rep_lab.mean()
    precision = rep_lab[rep_pos < best_k].mean()
    assert 0.15 < base < 0.6
    assert abs(precision - base) <= 0.05, (best_k, precision, base)
