from __future__ import annotations

import pytest

from steerlens.explore import ExploreState


def test_a_state_round_trips_through_the_url_and_json_exactly():
    s = ExploreState(
        prompt="Ünïcode & a=b? «quotes» + newline\nhere",
        vector="dislike-weighted/user003",
        user="user003",
        alphas=(0, 0.5, 2, 8.25),
        layers=(2, 3),
        gate="first:4",
        chat=False,
        max_new_tokens=7,
        colour_by="projection",
        threshold=-1.5,
        seed=3,
    )
    assert ExploreState.from_query(s.to_query()) == s
    assert ExploreState.from_query("?" + s.to_query()) == s
    assert ExploreState.from_json(s.to_json()) == s
    budgets = ExploreState(kl_budgets=(0.05, 0.2))
    assert ExploreState.from_query(budgets.to_query()) == budgets


def test_the_default_state_has_an_empty_query():
    assert ExploreState().to_query() == ""
    assert ExploreState.from_query("") == ExploreState()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alphas": "0,1"}, "3-7 distinct"),
        ({"alphas": "0,1,1"}, "3-7 distinct"),
        ({"alphas": "0,1,x"}, "comma-separated"),
        ({"alphas": "0,1,nan"}, "finite"),
        ({"kl_budgets": "0.1"}, "2-6 budgets"),
        ({"kl_budgets": "0.1,-1"}, "2-6 budgets"),
        ({"gate": "condition"}, "position gate"),
        ({"gate": "first:x"}, "gate"),
        ({"max_new_tokens": 0}, "1-256"),
        ({"prompt": "  "}, "prompt"),
        ({"layers": "1.5"}, "whole numbers"),
        ({"colour_by": "rainbow"}, "colour_by"),
        ({"chat": "maybe"}, "true or false"),
        ({"nonsense": 1}, "unknown field"),
    ],
)
def test_bad_fields_are_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        ExploreState.from_dict(fields)


def test_an_empty_threshold_in_a_link_means_the_fitted_one():
    assert ExploreState.from_query("threshold=").threshold is None
    assert ExploreState.from_query("threshold=0.25").threshold == 0.25
