"""Side-effect table: texts are the bootstrap units; perplexity pools tokens."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from steerlens.metrics.side_effects import side_effect_table


def test_kl_averages_users_within_a_text_then_texts_and_ppl_pools_tokens():
    rows = pd.DataFrame(
        [
            dict(method="m", alpha=1.0, user="a", text_id=0, kl=0.1, nll=10.0, n_tokens=5),
            dict(method="m", alpha=1.0, user="b", text_id=0, kl=0.3, nll=20.0, n_tokens=5),
            dict(method="m", alpha=1.0, user="a", text_id=1, kl=0.5, nll=30.0, n_tokens=10),
        ]
    )
    (row,) = side_effect_table(rows, n_boot=200).to_dict(orient="records")
    assert row["kl"] == pytest.approx((0.2 + 0.5) / 2)  # text 0: mean of its users
    assert row["ppl"] == pytest.approx(math.exp(60.0 / 20))  # all NLL over all tokens
    # two users' vectors: the units are users, and two are too few for an interval
    assert (row["n"], row["unit"], row["n_texts"], row["n_users"]) == (2, "user", 2, 2)
    assert math.isnan(row["kl_low"]) and math.isnan(row["ppl_high"])
    with pytest.raises(ValueError, match="columns"):
        side_effect_table(rows.drop(columns="nll"))


def test_one_vector_resamples_texts_and_several_resample_users_then_texts():
    one = pd.DataFrame(
        [
            dict(
                method="m",
                alpha=1.0,
                user="*",
                text_id=t,
                kl=0.2,
                nll=3.0 * (t + 1),
                n_tokens=t + 1,
            )
            for t in range(5)
        ]
    )
    (row,) = side_effect_table(one, n_boot=200).to_dict(orient="records")
    assert (row["n"], row["unit"]) == (5, "text")
    assert (row["kl_low"], row["kl_high"]) == pytest.approx((0.2, 0.2))  # every text 0.2
    assert row["ppl_low"] == pytest.approx(math.exp(3)) == row["ppl_high"]
    # five users whose vectors differ (KL 0.1 .. 0.5 on every text): users are the units;
    # users and texts are both resampled, and the texts, which agree, leave the interval to
    # the users' spread and degrees of freedom (Satterthwaite)
    many = pd.DataFrame(
        [
            dict(method="m", alpha=1.0, user=f"u{k}", text_id=t, kl=0.1 * k, nll=1.0, n_tokens=1)
            for k in range(1, 6)
            for t in range(6)
        ]
    )
    (row,) = side_effect_table(many, n_boot=500).to_dict(orient="records")
    assert (row["n"], row["unit"], row["n_texts"]) == (5, "user", 6)
    assert row["kl"] == pytest.approx(0.3)
    assert 0.05 <= row["kl_low"] < 0.25 and 0.35 < row["kl_high"] <= 0.55
    # two texts vary too little to say how they vary: the interval is withheld
    (two,) = side_effect_table(many[many["text_id"] < 2], n_boot=200).to_dict(orient="records")
    assert np.isnan(two["kl_low"]) and two["n"] == 5
