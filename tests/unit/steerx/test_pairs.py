"""SteerX selection on the pair-based backbone: the same pairs, selected vs all chosen tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_impl

import steerlens as sl
from steerlens.methods.personal import dislike_weighted, pair_activations
from steerlens.steerx import batch_history_effects
from steerlens.steerx.pairs import pair_vectors


@pytest.fixture(scope="module")
def user_pairs():
    ds = sl.data.load_prism("demo")
    by: dict[str, list] = {}
    for p in ds.preference_pairs(turn0_only=True):
        by.setdefault(p.user_id, []).append(p)
    user = sorted(u for u, ps in by.items() if len({x.chosen for x in ps}) >= 3)[0]
    return user, by[user][:4]


def _effects(model, pairs):
    convs = list(dict.fromkeys((p.prompt, p.chosen) for p in pairs))
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure."}]
    effects = batch_history_effects(model, [(pr, ch, history, None) for pr, ch in convs])
    return dict(zip(convs, effects, strict=True))


def test_all_tokens_is_the_dislike_weighted_vector_of_the_same_pairs(tiny, user_pairs):
    user, pairs = user_pairs
    effects = _effects(tiny, pairs)
    layers = [1, 2]
    got = pair_vectors(tiny, pairs, effects, layers, threshold=-1.0)  # every token selected
    pa = pair_activations(tiny, pairs, layers, progress_bar=False)
    want = dislike_weighted(pa, user, shrink=0.0)  # pair_vectors: the user's own estimate
    for name in ("all", "selected"):
        assert got[name].layers == layers
        for layer in layers:
            assert_close_impl(got[name].directions[layer], want.directions[layer])
    assert got["all"].metadata["n_pairs"] == len(pairs)


def test_selected_pools_only_the_selected_chosen_tokens(tiny, user_pairs):
    _, pairs = user_pairs
    pair = pairs[0]
    effects = _effects(tiny, [pair])
    e = effects[(pair.prompt, pair.chosen)]
    order = torch.argsort(e.effect, descending=True)
    threshold = float(e.effect[order[1]])  # exactly the top token (ties aside) is above it
    sel = e.select(threshold)
    assert sel == [int(order[0])]
    got = pair_vectors(tiny, [pair], effects, [2], threshold=threshold)["selected"]
    head = sl.encode_prompts(tiny, [pair.prompt])[0]
    ids = torch.cat([head, e.ids])
    acts = sl.cache_activations(tiny, [ids], [2], pool="none", progress_bar=False)[0][0]
    rej_ids, rej_mask = sl.response_masks(tiny, [pair.prompt], [pair.rejected])
    rej = sl.cache_activations(tiny, rej_ids, [2], pool="none", progress_bar=False)[0][0]
    want = acts[len(head) + torch.tensor(sel)].mean(0) - rej[rej_mask[0]].mean(0)
    assert_close_impl(got.directions[2], want)
    assert got.metadata["fallback_pairs"] == 0


def test_a_pair_with_nothing_selected_falls_back_to_all_tokens(tiny, user_pairs):
    _, pairs = user_pairs
    effects = _effects(tiny, pairs[:1])
    got = pair_vectors(tiny, pairs[:1], effects, [2], threshold=10.0)
    assert got["selected"].metadata["fallback_pairs"] == 1
    assert_close_impl(got["selected"].directions[2], got["all"].directions[2])


def test_bad_input_is_refused(tiny, user_pairs):
    _, pairs = user_pairs
    with pytest.raises(ValueError, match="token effects"):
        pair_vectors(tiny, pairs, {}, [2])
    ds = sl.data.load_prism("demo")
    other = next(p for p in ds.preference_pairs() if p.user_id != pairs[0].user_id)
    with pytest.raises(ValueError, match="one user"):
        pair_vectors(tiny, [pairs[0], other], _effects(tiny, pairs[:1]), [2])
