from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from steerlens.explore import ExploreState
from steerlens.explore.state import number


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


def test_a_query_always_names_its_prompt_vector_and_ladder():
    """An empty query is the page's default view, so no state writes one."""
    default = ExploreState()
    assert set(parse_qs(default.to_query())) == {"prompt", "vector", "alphas"}
    assert ExploreState.from_query(default.to_query()) == default
    budgets = ExploreState(kl_budgets=(0.05, 0.2))
    assert set(parse_qs(budgets.to_query())) == {"prompt", "vector", "kl_budgets"}


def test_numbers_keep_full_precision_through_the_url():
    s = ExploreState(alphas=(0, 0.1 + 0.2, 1 / 3, 123456.789), threshold=2 / 7)
    back = ExploreState.from_query(s.to_query())
    assert back.alphas == s.alphas and back.threshold == s.threshold
    assert number(4.0) == "4" and number(0.1) == "0.1" and number(7) == "7"


def test_an_export_with_provenance_reads_back_as_its_state():
    s = ExploreState(alphas=(0, 1, 2))
    wrapped = json.dumps({"state": s.to_dict(), "provenance": {"model": "m"}})
    assert ExploreState.from_json(wrapped) == s


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
