"""The report's findings: one sentence per finding present, each estimate with its interval."""

from __future__ import annotations

from steerlens.reporting.headline import headline


def test_each_present_finding_gives_a_sentence_with_its_interval():
    s = {
        "best_alpha": 0.5,
        "mae_change_pct_best": -2.5,
        "mae_change_pct_best_interval": [-9.0, 4.0],
        "n_prompts": 16,
        "n_users": 12,
        "kl_neutral": {
            "population": {"0": {"mean": 0.0}, "0.5": {"mean": 0.05, "interval": [0.04, 0.06]}}
        },
        "ppl_neutral": {"population": {"0": {"mean": 60.0, "interval": [40.0, 90.0]}}},
        "utility_per_kl": {
            "calibrated": {"population": {"0.05": {"mean": 1.0, "interval": [-1.0, 3.0]}}},
            "minus_population": {
                "dislike-weighted": {"0.05": {"mean": 0.2, "interval": [0.0, 0.4]}}
            },
        },
    }
    lines = headline(s)
    assert len(lines) == 3
    assert "α = 0.5 changes toxicity MAE by -2.50 [-9.00, +4.00] %" in lines[0]
    assert "population 0.0500 [0.0400, 0.0600] nats" in lines[1]
    assert "60.0 [40.0, 90.0] unsteered" in lines[1]
    assert "0.05 nats/token" in lines[2] and "dislike-weighted +0.200 [0, +0.400]" in lines[2]
    assert headline({}) == []  # nothing ran: nothing claimed
