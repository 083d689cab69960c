"""``fit_condition`` and ``choose_threshold``: the direction and threshold, recomputed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close_impl

import steerlens as sl
from steerlens.methods.condition import choose_threshold

PROMPTS = [
    "how do I bake bread",
    "tell me a joke about cats",
    "what is the capital of france",
    "write a poem about rain",
    "explain gravity simply",
    "how do I fix a bike tyre",
]
LABELS = [True, False, True, False, True, False]


def test_choose_threshold_maximises_balanced_accuracy():
    assert choose_threshold([0.0, 1.0, 2.0, 3.0], [False, False, True, True]) == 1.5
    # unbalanced classes: balanced accuracy, not accuracy (one positive above many negatives)
    t = choose_threshold([0, 1, 2, 3, 4, 10], [False] * 5 + [True])
    assert 4 < t < 10
    assert choose_threshold([0.0, 1.0, 2.0], [True, False, True]) == 1.5
    # a tie (0.5 and 2.5 both score 0.75): the middle one of the tied candidates' list
    assert choose_threshold([0.0, 1.0, 2.0, 3.0], [False, True, False, True]) == 2.5
    with pytest.raises(ValueError, match="both"):
        choose_threshold([0.0, 1.0], [True, True])
    with pytest.raises(ValueError, match="labels"):
        choose_threshold([0.0, 1.0], [True])


def test_mean_difference_condition_is_the_unit_mean_difference(tiny_bridge):
    cond = sl.methods.fit_condition(tiny_bridge, PROMPTS, LABELS, layer=2)
    acts = sl.cache_activations(tiny_bridge, PROMPTS, [2], pool="mean", progress_bar=False)
    x = acts[:, 0].double().numpy()
    y = np.array(LABELS)
    d = x[y].mean(0) - x[~y].mean(0)
    d /= np.linalg.norm(d)
    assert torch.allclose(cond.direction, torch.from_numpy(d).float(), atol=1e-6)
    assert cond.threshold == pytest.approx(choose_threshold(x @ d, y))
    assert (cond.layer, cond.pool, cond.hook) == (2, "mean", "hook_resid_post")
    assert cond.metadata["method"] == "mean-diff" and cond.metadata["n_steer"] == 3
    # the fitting prompts, run through generate: the decisions are the fitted rule's
    vec = sl.SteeringVector({3: torch.ones(tiny_bridge.cfg.d_model)})
    gen = sl.generate(
        tiny_bridge, PROMPTS, steering=vec, gate=cond, max_new_tokens=1, return_tokens=True
    )
    want = torch.from_numpy(x @ d).float()  # right- vs left-padded: two implementations
    assert_close_impl(torch.tensor(gen.projections), want)


def test_logistic_probe_and_a_threshold_on_other_prompts(tiny_bridge):
    other = ["how do I cook rice", "tell me a riddle"]
    cond = sl.methods.fit_condition(
        tiny_bridge,
        PROMPTS,
        LABELS,
        layer=1,
        method="logistic",
        pool="last",
        threshold_on=(other, [True, False]),
    )
    assert float(cond.direction.norm()) == pytest.approx(1.0, abs=1e-5)
    acts = sl.cache_activations(tiny_bridge, other, [1], pool="last", progress_bar=False)
    p = cond.project(acts[:, 0]).double().numpy()
    assert cond.threshold == pytest.approx(choose_threshold(p, [True, False]), abs=1e-5)
    assert cond.metadata["n_threshold_prompts"] == 2
    assert cond.metadata["threshold_balanced_accuracy"] == 1.0


def test_bad_labels_are_errors(tiny_bridge):
    with pytest.raises(ValueError, match="both"):
        sl.methods.fit_condition(tiny_bridge, PROMPTS, [True] * 6, layer=2)
    with pytest.raises(ValueError, match="labels for"):
        sl.methods.fit_condition(tiny_bridge, PROMPTS, LABELS[:3], layer=2)
    with pytest.raises(ValueError, match="method"):
        sl.methods.fit_condition(tiny_bridge, PROMPTS, LABELS, layer=2, method="svm")  # type: ignore[arg-type]
