"""StyleVector: the hand-computed mean difference; the selected-token variant."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_impl, on_device

import steerlens as sl
from steerlens.methods.stylevector import context_vector, style_vector, style_vectors

PROMPTS = ["Tell me a joke.", "How do I cook rice?", "Any tips for sleep?"]
USER = ["Damn, fine: a duck walks in.", "Honestly? Boil it, dude.", "Sleep more, lol."]
GENERIC = ["Here is a joke.", "Rinse the rice, then simmer.", "Keep a regular schedule."]


def _pooled(model, prompt, response, layers, keep=None, system=None):
    ids, masks = sl.response_masks(model, [prompt], [response], system=system)
    mask = masks[0]
    if keep is not None:
        mask = torch.cat([torch.zeros(len(mask) - len(keep), dtype=torch.bool), keep])
    with torch.no_grad():
        _, cache = model.run_with_cache(on_device(model, ids[0][None]))
    resid = torch.stack([cache[sl.resid_post(layer)][0].cpu() for layer in layers])  # [L, pos, d]
    return resid[:, mask].mean(1)


def test_style_vector_is_the_mean_difference_of_pooled_responses(tiny):
    layers = [1, 2]
    vec = style_vector(tiny, PROMPTS, USER, GENERIC, layers, batch_size=2)
    hand = torch.stack(
        [
            _pooled(tiny, p, u, layers) - _pooled(tiny, p, g, layers)
            for p, u, g in zip(PROMPTS, USER, GENERIC, strict=True)
        ]
    ).mean(0)
    assert vec.layers == layers and vec.method == "stylevector"
    assert_close_impl(vec.as_tensor(), hand)


def test_selected_token_variant_pools_only_kept_tokens(tiny):
    layers = [2]
    keep = [
        torch.zeros(
            len(sl.tokens.tokenize(tiny, [u], add_special_tokens=False)[0]), dtype=torch.bool
        )
        for u in USER
    ]
    keep[0][:3] = True
    keep[2][-2:] = True  # the second response keeps nothing: left out
    vec = style_vector(tiny, PROMPTS, USER, GENERIC, layers, keep=keep)
    hand = torch.stack(
        [
            _pooled(tiny, PROMPTS[i], USER[i], layers, keep[i])
            - _pooled(tiny, PROMPTS[i], GENERIC[i], layers)
            for i in (0, 2)
        ]
    ).mean(0)
    assert vec.method == "stylevector-selected" and vec.metadata["n_prompts"] == 2
    assert_close_impl(vec.as_tensor(), hand)
    with pytest.raises(ValueError, match="keep mask"):
        style_vector(tiny, PROMPTS, USER, GENERIC, layers, keep=[k[:-1] for k in keep])
    with pytest.raises(ValueError, match="prompts"):
        style_vector(tiny, PROMPTS, USER[:2], GENERIC, layers)


def test_both_variants_from_one_read_equal_two_calls(tiny):
    layers = [1, 3]
    keep = [
        torch.zeros(
            len(sl.tokens.tokenize(tiny, [u], add_special_tokens=False)[0]), dtype=torch.bool
        )
        for u in USER
    ]
    keep[1][1:4] = True
    keep[2][0] = (
        True  # keep[0] keeps nothing: the first response is left out of the selected vector
    )
    both, selected = style_vectors(tiny, PROMPTS, USER, GENERIC, layers, keep=keep, batch_size=2)
    alone = style_vector(tiny, PROMPTS, USER, GENERIC, layers)
    picked = style_vector(tiny, PROMPTS, USER, GENERIC, layers, keep=keep)
    for got, want in ((both, alone), (selected, picked)):
        assert (got.method, got.layers, got.metadata) == (want.method, want.layers, want.metadata)
        assert_close_impl(got.as_tensor(), want.as_tensor())
    assert selected.metadata["n_prompts"] == 2 and both.metadata["n_prompts"] == 3
    with pytest.raises(ValueError, match="keeps any"):
        style_vectors(tiny, PROMPTS, USER, GENERIC, layers, keep=[k & False for k in keep])


def test_context_variant_is_the_mean_difference_with_and_without_the_description(tiny):
    layers = [1, 3]
    desc = "The user prefers blunt, casual answers."
    vec = context_vector(tiny, PROMPTS, USER, desc, layers, batch_size=2)
    hand = torch.stack(
        [
            _pooled(tiny, p, u, layers, system=desc) - _pooled(tiny, p, u, layers)
            for p, u in zip(PROMPTS, USER, strict=True)
        ]
    ).mean(0)
    assert vec.method == "stylevector-context" and vec.metadata["context"] == desc
    # the same response tokens on both sides: only what precedes them differs
    _, with_desc = sl.response_masks(tiny, PROMPTS, USER, system=desc)
    _, without = sl.response_masks(tiny, PROMPTS, USER)
    assert [int(m.sum()) for m in with_desc] == [int(m.sum()) for m in without]
    assert all(len(a) > len(b) for a, b in zip(with_desc, without, strict=True))
    assert_close_impl(vec.as_tensor(), hand)
    assert float(vec.as_tensor().norm()) > 0  # the description does change the activations
    with pytest.raises(ValueError, match="empty"):
        context_vector(tiny, PROMPTS, USER, "  ", layers)
    with pytest.raises(ValueError, match="responses"):
        context_vector(tiny, PROMPTS, USER[:1], desc, layers)
