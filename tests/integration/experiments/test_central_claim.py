"""The study's central claim on the embedded model, in `make test`: on held-out pairs,
personalised vectors separate the simulated users' choices better than the population vector
(a paired interval over users above 0), and stay at or below the oracle (the users' own latent
weights) within 0.03."""

from __future__ import annotations

import pytest

from steerlens.experiments.demo import DemoConfig, run_demo


@pytest.mark.integration
def test_personalised_ppa_beats_population_and_stays_below_the_oracle(tmp_path):
    s = run_demo(DemoConfig(quick=True, out=str(tmp_path), steps=["vectors"]))
    personal, population, oracle = (
        s[k]["mean"] for k in ("ppa_personalized", "ppa_population", "ppa_oracle")
    )
    diff = s["ppa_personalized_minus_population"]
    assert diff["n"] >= 5 and diff["interval"] is not None
    assert diff["interval"][0] > 0, diff  # higher, by the paired interval over users
    assert personal > population
    assert personal <= oracle + 0.03
    # the same users in the paired difference as in each estimate
    assert diff["n"] == s["ppa_personalized"]["n"] == s["ppa_population"]["n"]
    assert diff["mean"] == pytest.approx(personal - population, abs=1e-4)
