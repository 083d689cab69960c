"""Single-pass scoring: gates mean the same as in generation; per-row α follows its prompt."""

from __future__ import annotations

import pytest
import torch
from conftest import ENGINES, PROMPTS, assert_close_impl, no_hooks_left

import steerlens as sl


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("gate", ["all", "prefill", sl.FirstK(2), "generated"])
def test_scoring_generated_tokens_gives_the_logits_they_were_generated_from(
    tiny, rand_vec, gate, engine
):
    alphas = [2.0, -3.0, 5.0]
    out = sl.generate(
        tiny,
        PROMPTS,
        steering=rand_vec,
        alpha=alphas,
        gate=gate,
        max_new_tokens=6,
        return_logits=True,
        engine=engine,
    )
    with sl.steering(tiny, rand_vec, alpha=alphas, gate=gate):
        scored = sl.continuation_logprobs(tiny, PROMPTS, out.tokens, batch_size=2, engine=engine)
    for toks, logits, lp in zip(out.tokens, out.logits, scored, strict=True):
        expected = logits.log_softmax(-1).gather(-1, toks[:, None])[:, 0]
        assert_close_impl(lp, expected)
    assert no_hooks_left(tiny)


def test_scoring_gate_differs_from_counting_everything_as_prompt(tiny, rand_vec):
    """Without per-row prompt lengths, 'generated' would steer nothing in a single pass."""
    resp = ["abc def", "xyz"]
    base = sl.continuation_logprobs(tiny, PROMPTS[:2], resp)
    with sl.steering(tiny, rand_vec, alpha=6.0, gate="generated"):
        steered = sl.continuation_logprobs(tiny, PROMPTS[:2], resp)
    with sl.steering(tiny, rand_vec, alpha=6.0, gate="prefill"):
        prefill = sl.continuation_logprobs(tiny, PROMPTS[:2], resp)
    for b, s, p in zip(base, steered, prefill, strict=True):
        assert_close_impl(s[0], b[0])  # the first response token is predicted from the prompt
        assert not torch.allclose(s[1:], b[1:], atol=1e-3)
        assert not torch.allclose(p, b, atol=1e-3)


def test_continuation_logprobs_inputs(tiny):
    lps = sl.continuation_logprobs(tiny, ["q?", "q?"], ["", "ok"])
    assert lps[0].numel() == 0 and lps[1].shape == (2,)
    # log p of "ok" after the chat-formatted "q?", read off one full forward pass
    head = sl.encode_prompts(tiny, ["q?"])[0]
    tail = sl.tokens.tokenize(tiny, ["ok"], add_special_tokens=False)[0]
    ids = torch.cat([head, tail]).to(tiny.cfg.device)[None]
    with torch.no_grad():
        logp = tiny(ids)[0].float().log_softmax(-1).cpu()
    assert_close_impl(lps[1], logp[len(head) - 1 : -1].gather(-1, tail[:, None])[:, 0])
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        sl.continuation_logprobs(tiny, ["a", "b"], ["c"])
    with pytest.raises(TypeError, match="not one string"):
        sl.continuation_logprobs(tiny, "a", "b")


@pytest.mark.parametrize("engine", ENGINES)
def test_per_row_alpha_with_an_empty_continuation(tiny, rand_vec, engine):
    resp = ["abc", "", "a longer response"]
    alphas = [1.0, 2.0, -3.0]
    with sl.steering(tiny, rand_vec, alpha=alphas):
        batch = sl.continuation_logprobs(tiny, PROMPTS, resp, batch_size=2, engine=engine)
    assert batch[1].numel() == 0
    for i in (0, 2):
        with sl.steering(tiny, rand_vec, alpha=alphas[i]):
            (single,) = sl.continuation_logprobs(tiny, [PROMPTS[i]], [resp[i]], engine=engine)
        assert_close_impl(batch[i], single)


@pytest.mark.parametrize("engine", ENGINES)
def test_repeated_rows_are_scored_once_and_each_gets_its_own_copy(tiny, engine, monkeypatch):
    from steerlens.run import scoring

    heads = sl.encode_prompts(tiny, PROMPTS[:2])
    tails = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    order = [0, 1, 0, 0, 1]
    ran: list[int] = []
    split = scoring.split_rows
    monkeypatch.setattr(scoring, "split_rows", lambda n, g: ran.append(n) or split(n, g))
    got = scoring.ids_logprobs(
        tiny, [heads[i] for i in order], [tails[i] for i in order], engine=engine
    )
    assert ran == [2]  # the two distinct rows only
    alone = [scoring.ids_logprobs(tiny, [heads[i]], [tails[i]], engine=engine)[0] for i in (0, 1)]
    for lp, i in zip(got, order, strict=True):
        assert torch.equal(lp, got[order.index(i)])  # copies of one computation
        assert_close_impl(lp, alone[i])
    got[2].zero_()
    assert float(got[0].abs().sum()) > 0  # rows never alias


@pytest.mark.parametrize("engine", ENGINES)
def test_repeated_rows_under_per_row_alpha_run_in_their_own_rows(tiny, rand_vec, engine):
    heads = sl.encode_prompts(tiny, PROMPTS[:1]) * 2
    tails = [torch.tensor([5, 6, 7])] * 2
    with sl.steering(tiny, rand_vec, alpha=[0.0, 4.0]):
        both = sl.run.scoring.ids_logprobs(tiny, heads, tails, engine=engine)
    plain = sl.run.scoring.ids_logprobs(tiny, heads[:1], tails[:1], engine=engine)[0]
    assert_close_impl(both[0], plain)
    assert float((both[1] - both[0]).abs().max()) > 1e-3  # row 1 steered, row 0 not
    assert no_hooks_left(tiny)
