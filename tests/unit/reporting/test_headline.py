"""The headline: claims as data whose words follow their paired intervals, rendered with
estimate, interval and n (or "n too small")."""

from __future__ import annotations

import re

from steerlens.experiments.claims import FAMILIES, build_headline
from steerlens.reporting.claim_text import headline, render_claim
from steerlens.reporting.markdown import summary_markdown


def _e(mean, interval, n, unit="user"):
    return {"mean": mean, "interval": interval, "n": n, "unit": unit}


SUMMARY = {
    "data_is_simulated": True,
    "operating_alpha": 0.5,
    "selection": {"operating_alpha": {"chosen": 0.5, "n_select": 8, "n_report": 9}},
    "mae_change_pct_best": _e(-12.0, [-20.0, -3.0], 12),
    "ppa_personalized_method": "personalized (dislike-weighted)",
    "ppa_personalized_minus_population": _e(0.12, [0.02, 0.2], 16),
    "ppa_bradley_terry_minus_population": _e(0.05, [-0.01, 0.1], 16),
    "ppa_oracle_minus_personalized": _e(0.08, [0.03, 0.12], 16),
    "steerx_pair_minus_all_ppa": _e(0.013, None, 3),
    "token_estimator": "none · log-ratio > 0.25",
    "token_effects_report_targets": 10,
    "token_precision": {**_e(0.6, [0.4, 0.8], 5), "truth": "completed"},
    "token_precision_planted": {**_e(0.5, [0.3, 0.7], 5), "truth": "planted"},
}


def test_comparisons_are_worded_by_their_paired_interval():
    claims = {c["claim"].split(":")[0]: c for c in build_headline(SUMMARY)}
    text = " | ".join(c["claim"] for c in claims.values())
    assert "disjoint report prompts: lower (better)" in text
    assert "personalized (dislike-weighted) minus population (paired by user): higher" in text
    # an interval that includes 0 never reads as a difference
    assert (
        "Bradley-Terry minus population (paired by user): no difference detected (n = 16 users)"
        in text
    )
    # below 5 users there is no interval, and so no direction either
    pair = next(c for c in claims.values() if c["claim"].startswith("SteerX-selected"))
    assert pair["interval"] is None and pair["n"] == 3
    assert pair["claim"].endswith("no difference detected (n = 3 users)")
    for c in claims.values():
        assert set(c) == {
            *("claim", "estimate", "interval", "n", "unit", "truth", "paired"),
            *("family", "key", "p_value", "p_holm", "family_size"),
        }


def test_token_claims_name_their_truth_and_the_scored_half():
    claims = [c for c in build_headline(SUMMARY) if "SteerX token selection" in c["claim"]]
    assert {c["truth"] for c in claims} == {"planted", "completed"}
    planted = next(c for c in claims if c["truth"] == "planted")
    assert "against the planted preference tokens" in planted["claim"]
    assert planted["estimate"] == 0.5
    assert all("10 report-side target responses" in c["claim"] for c in claims)


def test_flipping_an_interval_flips_the_word():
    s = dict(SUMMARY, ppa_personalized_minus_population=_e(-0.12, [-0.2, -0.02], 16))
    c = next(c for c in build_headline(s) if "minus population" in c["claim"])
    assert c["claim"].endswith(": lower")


def test_rendered_sentences_carry_interval_and_n_or_say_n_too_small():
    lines = headline(SUMMARY)
    assert any("+0.120 [+0.0200, +0.200] (n = 16 users" in line for line in lines)
    pair = next(line for line in lines if "SteerX-selected" in line)
    assert "n = 3 users: n too small for an interval" in pair
    assert (
        render_claim(
            {"claim": "x", "estimate": 1.0, "interval": None, "n": 2, "unit": "user", "truth": None}
        )
        == "x: +1.00 (n = 2 users: n too small for an interval)."
    )
    assert headline({}) == []  # nothing ran: nothing claimed
    # a summary written before estimates carried n (plain numbers) claims nothing, no crash
    assert headline({"operating_alpha": 0.5, "mae_change_pct_best": -2.5}) == []
    # a level (not a comparison) carries no sign
    kl = {"population": {"0.5": {"mean": 0.05, "interval": [0.04, 0.06], "n": 8, "unit": "text"}}}
    (line,) = headline({"operating_alpha": 0.5, "kl_neutral": kl})
    assert line.endswith("(nats): 0.0500 [0.0400, 0.0600] (n = 8 texts).")


# --- multiplicity: one primary claim, declared families, Holm within each -----------------

FAMILY = {  # one clearly nonzero comparison and three nulls in "SteerX vs all-history"
    "steerx_minus_allhistory_ppa": {
        "mean": _e(0.30, [0.20, 0.40], 12),
        "bipo": _e(0.01, [-0.05, 0.07], 12),
    },
    "steerx_minus_allhistory_ppa_under_steering": {"mean": _e(-0.01, [-0.06, 0.04], 12)},
    "steerx_pair_minus_all_ppa": _e(0.02, [-0.03, 0.07], 12),
    # raw interval excludes 0 (p ≈ 0.04) but not after Holm over 5: a negative SteerX result
    "steerx_pair_minus_all_ppa_under_steering": _e(-0.063, [-0.123, -0.003], 12),
}


def test_holm_within_a_family_words_only_the_clearly_nonzero_comparison():
    claims = [c for c in build_headline(FAMILY) if c["family"] == "SteerX vs all-history"]
    # every member is listed, whichever method it favours (the negative one included)
    assert {c["key"] for c in claims} == {
        "steerx_minus_allhistory_ppa.mean",
        "steerx_minus_allhistory_ppa.bipo",
        "steerx_minus_allhistory_ppa_under_steering.mean",
        "steerx_pair_minus_all_ppa",
        "steerx_pair_minus_all_ppa_under_steering",
    }
    assert all(c["family_size"] == 5 for c in claims)
    worded = [c for c in claims if c["claim"].endswith((": higher", ": lower"))]
    assert [c["key"] for c in worded] == ["steerx_minus_allhistory_ppa.mean"]
    assert worded[0]["p_holm"] < 0.05
    negative = next(c for c in claims if c["key"] == "steerx_pair_minus_all_ppa_under_steering")
    assert negative["p_value"] < 0.05 <= negative["p_holm"]  # survives alone, not in its family
    assert "no difference detected after Holm's adjustment (n = 12 users)" in negative["claim"]
    # alone (a family of one) the same interval would be worded
    alone = {"steerx_pair_minus_all_ppa_under_steering": FAMILY[negative["key"]]}
    (c,) = build_headline(alone)
    assert c["claim"].endswith(": lower") and c["p_holm"] == c["p_value"]


def test_one_primary_claim_and_declared_families_in_the_headline():
    claims = build_headline(SUMMARY)
    primary = [c for c in claims if c["family"] == "primary"]
    assert [c["key"] for c in primary] == ["ppa_personalized_minus_population"]
    assert primary[0]["family_size"] == 1 and claims[0] is primary[0]  # listed first
    assert all(c["family"] in FAMILIES for c in claims if c["family"])
    # every paired comparison is in a family; levels are in none and carry no test
    assert all(c["family"] for c in claims if c["paired"])
    assert all(c["p_holm"] is None for c in claims if not c["family"])
    fams = {c["key"]: c["family"] for c in claims}
    assert fams["ppa_oracle_minus_personalized"] == "preference accuracy"
    assert fams["mae_change_pct_best"] == "alignment"


def _words(text: str) -> set[str]:
    return set(re.findall(r"\b(higher|lower|better|worse)\b", text, flags=re.IGNORECASE))


def test_the_page_words_directions_only_in_the_families_never_in_exploratory_parts():
    s = {
        "model": "smollm2-135m-instruct",
        "data": "demo",
        "config": {"quick": True},
        "ppa_personalized": _e(0.76, [0.7, 0.82], 16),
        "steerx_pair_ppa": _e(0.6, [0.5, 0.7], 12),
        "steerx_ppa": {"mean": _e(0.58, [0.48, 0.67], 12)},
        **SUMMARY,
        **FAMILY,
        "mmlu_items": 60,
        "mmlu_steered_minus_unsteered": _e(-0.01, [-0.05, 0.03], 60, "item"),
        "conditional": {
            "population": {
                "mae": {
                    "conditional": _e(0.1, [0.05, 0.15], 12),
                    "unconditional": _e(0.2, [0.1, 0.3], 12),
                    "difference": _e(-0.1, [-0.15, -0.05], 12),
                }
            }
        },
        "conditional_alphas": {"operating": 0.5},
    }
    page = summary_markdown(s)
    findings, rest = page.split("## Exploratory estimates (all tables below)")
    primary, secondary = findings.split("### Primary claim")[1].split("### Secondary", 1)
    assert _words(primary) == {"higher"}
    levels = findings.split("### Exploratory levels")[1]
    assert "against the planted preference tokens" in levels and not _words(levels)
    # tables and everything after the findings carry no direction words
    assert "| difference (paired per user) |" in rest and "| mean |" in rest
    assert not _words(rest), _words(rest)
    # each family is on the page with its members and Holm's adjusted p
    for name in ("preference accuracy", "SteerX vs all-history", "side effects", "conditional"):
        assert f"### Secondary family “{name}”" in findings
    assert "Holm-adjusted" in secondary and secondary.count(": higher:") == 2  # oracle, mean
    assert "PPA under steering, paired by user: no difference detected after Holm" in secondary
