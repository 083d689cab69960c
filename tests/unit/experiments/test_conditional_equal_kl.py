"""The conditional step's equal-KL rules without a model: the non-degenerate α range, the
held-out KL ratio and the band that keeps the words "at equal KL", the arms' agreement, and
how the page and the headline withhold the equal-KL comparison."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from steerlens.experiments import conditional as cm
from steerlens.experiments.claims import build_headline, equal_kl_kept
from steerlens.reporting.markdown import conditional_verdict, summary_markdown


def test_the_ratio_rule_keeps_equal_kl_only_within_the_band():
    assert cm.KL_RATIO_BAND == (0.9, 1.1)
    for ratio in (0.9, 1.0, 1.1, 0.95):
        assert cm.kl_matched(ratio), ratio
    for ratio in (0.85, 1.07 * 1.1, 1.17, None, math.nan, math.inf, 0.0):
        assert not cm.kl_matched(ratio), ratio
    assert cm.kl_matched(1.15, band=(0.8, 1.2))


def test_heldout_ratio_is_conditional_at_equal_kl_over_unconditional():
    rows = pd.DataFrame(
        {
            "arm": ["unconditional"] * 2 + ["conditional_equal_kl"] * 2 + ["conditional"] * 2,
            "kl": [0.1, 0.3, 0.2, 0.26, 0.0, 0.1],
        }
    )
    assert cm.heldout_kl_ratio(rows) == pytest.approx(0.23 / 0.2)
    assert cm.heldout_kl_ratio(rows[rows["arm"] != "conditional_equal_kl"]) is None
    assert cm.heldout_kl_ratio(rows.assign(kl=0.0)) is None  # no unconditional KL: no ratio


def _dose(shares: dict[float, float], method: str = "population", n: int = 4) -> pd.DataFrame:
    rows = []
    for a, share in shares.items():
        for i in range(n):
            rows.append(
                {
                    "method": method,
                    "alpha": a,
                    "gate": "all",
                    "prompt_id": f"p{i}",
                    "degenerate": i < share * n,
                }
            )
    # a report prompt, always degenerate: never read
    rows += [
        {"method": method, "alpha": a, "gate": "all", "prompt_id": "r", "degenerate": True}
        for a in shares
    ]
    return pd.DataFrame(rows)


def test_the_non_degenerate_range_stops_below_the_first_mostly_degenerate_alpha():
    select = [f"p{i}" for i in range(4)]
    alphas = [0.0, 0.5, 1.0, 1.5, 2.0]
    dose = _dose({0.5: 0.25, 1.0: 0.5, 1.5: 0.75, 2.0: 0.0})
    limit, shares = cm.nondegenerate_limit(dose, select, "population", alphas)
    assert limit == 1.0  # 0.5 of 1.0 is not above DEGENERATE_MAX; 1.5 is, so 2.0 is out too
    assert shares == {"0.5": 0.25, "1": 0.5, "1.5": 0.75, "2": 0.0}
    assert cm.nondegenerate_limit(_dose({0.5: 1.0}), select, "population", [0, 0.5])[0] == 0.0
    clean = _dose({0.5: 0.0, 1.0: 0.0})
    assert cm.nondegenerate_limit(clean, select, "population", [0.0, 0.5, 1.0])[0] == 1.0
    # another method's rows, or none with a degenerate column: the largest swept α
    assert cm.nondegenerate_limit(dose, select, "bradley-terry", alphas)[0] == 2.0


def test_arm_agreement_counts_differing_prompts_and_degenerate_shares():
    def cells(gens, gate, alpha, degenerate):
        return pd.DataFrame(
            {
                "method": "population",
                "alpha": alpha,
                "gate": gate,
                "prompt_id": [f"p{i}" for i in range(len(gens))],
                "generation": gens,
                "degenerate": degenerate,
            }
        )

    dose = cells(["a", "b", "c", "d"], "all", 1.0, [False, False, True, True])
    cond = pd.concat(
        [
            cells(["a", "x", "c", "d"], "condition", 1.0, [False, False, False, True]),
            cells(["a", "x", "y", "z"], "condition", 2.0, [True, True, True, True]),
        ]
    )
    out = cm.arm_agreement(dose, cond, ["population"], 1.0, {"population": 2.0})["population"]
    assert out["operating"] == {
        "alpha": 1.0,
        "degenerate_share": {"conditional": 0.25, "unconditional": 0.5},
        "prompts_differing": 1,
        "prompts": 4,
    }
    assert out["equal_kl"]["prompts_differing"] == 3
    assert out["equal_kl"]["degenerate_share"] == {"conditional": 1.0, "unconditional": 0.5}


def _summary(ratio: float | None, matched: bool) -> dict:
    diff = {"mean": -0.05, "interval": [-0.09, -0.01], "n": 12, "unit": "user"}
    arms = {"conditional": diff, "unconditional": diff, "difference": diff}
    return {
        "operating_alpha": 0.5,
        "conditional": {"population": {"mae": arms, "mae_equal_kl": arms}},
        "conditional_alphas": {
            "operating": 0.5,
            "equal_kl": {"population": 1.0},
            "equal_kl_capped": {"population": False},
            "equal_kl_heldout_ratio": {"population": ratio},
            "equal_kl_matched": {"population": matched},
            "equal_kl_ratio_band": [0.9, 1.1],
            "equal_kl_limit": {"population": 1.0},
            "equal_kl_selection_texts": 8,
        },
        "conditional_arms": {
            "population": {
                "operating": {
                    "alpha": 0.5,
                    "degenerate_share": {"conditional": 0.0, "unconditional": 0.125},
                    "prompts_differing": 1,
                    "prompts": 7,
                }
            }
        },
    }


def test_the_page_and_headline_withhold_equal_kl_outside_the_band_and_show_the_ratio():
    off = _summary(1.17, cm.kl_matched(1.17))
    assert not equal_kl_kept(off["conditional_alphas"])
    verdict = conditional_verdict(off)
    assert "No equal-KL comparison is made" in verdict and "1.17" in verdict
    assert "at equal neutral-text KL" not in verdict
    claims = [c["claim"] for c in build_headline(off)]
    assert not any("equal neutral-text KL" in c for c in claims)
    # still members of the family (its size does not move), at p = 1 and never worded
    withheld = [c for c in build_headline(off) if "withheld: KL not matched" in c["claim"]]
    assert withheld and all(c["p_value"] == 1.0 and c["interval"] is None for c in withheld)
    page = summary_markdown(off)
    assert "| population | 1 (1) | 1.17 | withheld | 0 / 0.12 | 1 of 7 |" in page
    assert "chosen on 8 neutral texts" in page
    on = _summary(1.04, cm.kl_matched(1.04))
    assert equal_kl_kept(on["conditional_alphas"])
    assert "at equal neutral-text KL" in conditional_verdict(on)
    assert any("equal neutral-text KL" in c["claim"] for c in build_headline(on))
    assert "| 1.04 | kept |" in summary_markdown(on)
    # a summary from before the rule: the capped flag alone decides
    old = {"equal_kl_capped": {"population": True}}
    assert not equal_kl_kept(old) and equal_kl_kept({"equal_kl_capped": {"population": False}})


def _split(projections: list[float]) -> float:
    """A threshold between two distinct projections (never on one: rounding could flip it)."""
    vals = sorted(set(projections))
    mid = len(vals) // 2
    return (vals[mid - 1] + vals[mid]) / 2


def test_conditional_kl_runs_only_fired_texts_and_equals_running_every_row(tiny, rand_vec):
    import torch

    import steerlens as sl
    from steerlens.run.divergence import reference_logprobs, steering_divergence

    texts = [
        "the capital of france is paris",
        "two plus two is four",
        "water boils at one hundred degrees",
        "a triangle has three sides",
    ]
    other = rand_vec.rescaled({2: 2.0, 3: 2.0})
    vecs = [rand_vec, other]
    d = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(3))
    probe = steering_divergence(tiny, texts, rand_vec, 1.0, gate=sl.Condition(d, 2, 0.0))
    cond = sl.Condition(d, 2, _split([p.projection for p in probe]))
    fires = cm.condition_fires(tiny, cond, other, texts)
    assert 0 < sum(fires) < len(texts)  # the skip is exercised
    ref = reference_logprobs(tiny, texts)
    assert cm.condition_fires(tiny, cond, other, texts, reference=ref) == fires
    got = cm.conditional_kl(tiny, vecs, cond, texts, 3.0, fires, ref)
    every = steering_divergence(
        tiny, texts * 2, [v for v in vecs for _ in texts], 3.0, gate=cond, reference=ref * 2
    )
    assert [s for _, s in got] == [bool(e.steered) for e in every]
    for (kl, on), e in zip(got, every, strict=True):
        if on:
            assert kl == pytest.approx(e.kl, rel=1e-4, abs=1e-7)
            assert kl > 0
        else:  # not run: the unsteered model, KL 0 (the full pass agrees up to rounding)
            assert kl == 0.0 and e.kl == pytest.approx(0.0, abs=1e-6)
    # the search and the report rows read the same decisions and reference
    alpha, table = cm.equal_kl_alpha(tiny, vecs, cond, texts, 1.0, reference=ref, fires=fires)
    assert alpha >= 1.0 and table["steered"].dropna().iloc[1:].eq(sum(fires) / 4).all()
    rows = cm.neutral_kl_rows(tiny, vecs, cond, texts, 1.0, alpha, reference=ref, fires=fires)
    cond_rows = rows[rows["arm"] == "conditional"]
    assert (cond_rows.loc[~cond_rows["steered"], "kl"] == 0.0).all()
