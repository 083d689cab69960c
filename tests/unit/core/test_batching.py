"""The one batching loop: a token budget packs long and short inputs, results keep input order."""

from __future__ import annotations

import pytest
import torch
from conftest import ENGINES, PROMPTS, assert_close_impl

import steerlens as sl
from steerlens.core.batching import _chunks, map_batches, token_budget
from steerlens.run.scoring import ids_logprobs


def test_chunks_hold_the_row_cap_and_the_token_budget():
    lengths = [100, 90, 50, 40, 30, 10, 10, 10, 10, 500]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks = _chunks(order, lengths, batch_size=4, max_tokens=200)
    assert [i for c in chunks for i in c] == order  # consecutive runs, nothing lost
    assert chunks[0] == [9]  # longer than the budget: alone
    for c in chunks:
        assert len(c) <= 4
        assert len(c) == 1 or len(c) * max(lengths[i] for i in c) <= 200
    assert _chunks(order, lengths, batch_size=4, max_tokens=None) == [
        order[i : i + 4] for i in range(0, 10, 4)
    ]


def test_a_budgeted_map_returns_every_row_in_input_order(tiny):
    ids = [torch.arange(1, n + 1) for n in (3, 30, 7, 12, 1, 25)]
    seen = []

    def fn(batch):
        seen.append(batch.enc.input_ids.numel())
        return [int(batch.enc.lengths[r]) for r in range(len(batch.rows))]

    got = map_batches(tiny, ids, fn, batch_size=4, side="right", max_tokens=40)
    assert got == [3, 30, 7, 12, 1, 25]
    assert max(seen) <= 40 or len(seen) == len(ids)
    with pytest.raises(ValueError, match="max_tokens"):
        map_batches(tiny, ids, fn, batch_size=4, side="right", max_tokens=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_scores_do_not_depend_on_the_budget_or_the_logits_kept(tiny, engine):
    heads = sl.tokens.tokenize(tiny, PROMPTS)
    tails = [h.flip(0)[:5] for h in heads]
    packed = ids_logprobs(tiny, heads, tails, batch_size=3, max_tokens=16, engine=engine)
    wide = ids_logprobs(tiny, heads, tails, batch_size=3, max_tokens=None, engine=engine)
    for a, b in zip(packed, wide, strict=True):
        assert_close_impl(a, b)


def test_the_default_budget_follows_the_device(tiny):
    assert token_budget(tiny) == (16384 if str(tiny.cfg.device).startswith("cuda") else 1024)


@pytest.mark.parametrize("engine", ENGINES)
def test_logits_kept_only_where_scored_equal_a_full_forward(tiny, engine):
    heads = sl.tokens.tokenize(tiny, PROMPTS)
    tails = [h.flip(0)[:4] for h in heads]
    got = ids_logprobs(tiny, heads, tails, batch_size=2, engine=engine)
    for h, t, lp in zip(heads, tails, got, strict=True):
        ids = torch.cat([h, t]).to(tiny.cfg.device)[None]
        with torch.no_grad():
            full = tiny(ids).float().log_softmax(-1)[0]  # every position, then picked
        want = full[len(h) - 1 : -1].gather(-1, ids[0, len(h) :, None])[:, 0]
        assert_close_impl(lp, want)
