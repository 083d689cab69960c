"""Side-effect table: texts are the bootstrap units; perplexity pools tokens."""

from __future__ import annotations

import math

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
    # two texts: resampled means are 0.2, 0.5 or 0.35; the perplexity of either text alone
    # or both is exp(3) (every text has NLL 3 per token)
    assert (row["kl_low"], row["kl_high"]) == pytest.approx((0.2, 0.5))
    assert row["ppl_low"] == pytest.approx(math.exp(3)) == row["ppl_high"]
    assert (row["n_texts"], row["n_users"]) == (2, 2)
    with pytest.raises(ValueError, match="columns"):
        side_effect_table(rows.drop(columns="nll"))
