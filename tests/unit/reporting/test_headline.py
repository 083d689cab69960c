"""The headline: claims as data whose words follow their paired intervals, rendered with
estimate, interval and n (or "n too small")."""

from __future__ import annotations

from steerlens.experiments.headline import build_headline
from steerlens.reporting.headline import headline, render_claim


def _e(mean, interval, n, unit="user"):
    return {"mean": mean, "interval": interval, "n": n, "unit": unit}


SUMMARY = {
    "data_is_simulated": True,
    "best_alpha": 0.5,
    "selection": {"operating_alpha": {"chosen": 0.5, "n_select": 8, "n_report": 9}},
    "mae_change_pct_best": _e(-12.0, [-20.0, -3.0], 6),
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
        assert set(c) == {"claim", "estimate", "interval", "n", "unit", "truth", "paired"}


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
    pair = next(line for line in lines if line.startswith("SteerX-selected"))
    assert "n = 3 users: n too small for an interval" in pair
    assert (
        render_claim(
            {"claim": "x", "estimate": 1.0, "interval": None, "n": 2, "unit": "user", "truth": None}
        )
        == "x: +1.00 (n = 2 users: n too small for an interval)."
    )
    assert headline({}) == []  # nothing ran: nothing claimed
    # a summary written before estimates carried n (plain numbers) claims nothing, no crash
    assert headline({"best_alpha": 0.5, "mae_change_pct_best": -2.5}) == []
    # a level (not a comparison) carries no sign
    kl = {"population": {"0.5": {"mean": 0.05, "interval": [0.04, 0.06], "n": 8, "unit": "text"}}}
    (line,) = headline({"best_alpha": 0.5, "kl_neutral": kl})
    assert line.endswith("(nats): 0.0500 [0.0400, 0.0600] (n = 8 texts).")
