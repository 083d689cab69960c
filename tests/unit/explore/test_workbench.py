from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import no_hooks_left

import steerlens as sl
from steerlens.explore import ExploreState, prepare_vector, run_ladder
from steerlens.explore import workbench as wb

PROMPT = "hello there, how are you today?"


def _state(**kw):
    return ExploreState(**{"prompt": PROMPT, "max_new_tokens": 6, "chat": False, **kw})


def _ids(model, texts):
    return [model.tokenizer.decode([i]) for i in texts]


@pytest.mark.parametrize("gate", ["all", "first:2", "generated"])
def test_each_row_is_the_single_generation_at_its_alpha(tiny, rand_vec, gate):
    """The ladder is one batched call: row i equals generate() run alone at α_i, the
    unsteered reply equals an unsteered generate(), and α = 0 reproduces it."""
    state = _state(alphas=(0, 3, 9), gate=gate)
    ladder = run_ladder(tiny, state, prepare_vector(rand_vec, state, tiny))
    base = sl.generate(tiny, [PROMPT], max_new_tokens=6, chat=False, return_tokens=True)
    assert [t.text for t in ladder.unsteered.tokens] == _ids(tiny, base.tokens[0].tolist())
    assert ladder.reproduced is True
    for row in ladder.rows:
        alone = sl.generate(
            tiny,
            [PROMPT],
            steering=rand_vec,
            alpha=row.alpha,
            gate=sl.core.gates.parse_gate(gate),
            max_new_tokens=6,
            chat=False,
            return_tokens=True,
        )
        assert row.text == alone.texts[0]
        assert [t.text for t in row.tokens] == _ids(tiny, alone.tokens[0].tolist())
    assert any(r.first_change is not None for r in ladder.rows if r.alpha)  # it steers
    assert no_hooks_left(tiny) and not sl.active_steering(tiny)


def test_token_kl_projection_and_perplexity_are_the_teacher_forced_values(tiny):
    """Per token, read at the position that predicted it: the steered distribution is the one
    generate() sampled from (its own logits, KV-cached), the KL and the steered residual's
    projection equal TransformerLens' run_with_cache under sl.steering, the unsteered reply's
    projection its unsteered residual's, and the perplexity continuation_logprobs'."""
    g = torch.Generator().manual_seed(5)
    vec = sl.SteeringVector(
        {2: torch.randn(tiny.cfg.d_model, generator=g)}, model_name="tiny-random"
    )
    state = _state(alphas=(0, 2, 6))
    ladder = run_ladder(tiny, state, prepare_vector(vec, state, tiny))
    row = ladder.rows[2]
    gen = sl.generate(
        tiny,
        [PROMPT],
        steering=vec,
        alpha=6.0,
        max_new_tokens=6,
        chat=False,
        return_tokens=True,
        return_logits=True,
    )
    prompt, reply = gen.prompt_ids[0].cpu(), gen.tokens[0].cpu()
    assert [t.text for t in row.tokens] == _ids(tiny, reply.tolist())
    sampled = gen.logits[0].float().softmax(-1).max(-1).values  # [steps]
    got_top = torch.tensor([t.top_steered[0][1] for t in row.tokens])
    torch.testing.assert_close(got_top, sampled[: len(reply)], atol=2e-3, rtol=0)
    ids = torch.cat([prompt, reply])[None].to(tiny.cfg.device)
    n = len(prompt)
    name = sl.hook_name(2)
    with torch.inference_mode():
        plain_logits, plain_cache = tiny.run_with_cache(ids, names_filter=name)
        with sl.steering(tiny, vec, 6.0):
            logits, cache = tiny.run_with_cache(ids, names_filter=name)
    at = slice(n - 1, n - 1 + len(reply))
    lp_s = logits[0, at].float().log_softmax(-1).cpu()
    lp_u = plain_logits[0, at].float().log_softmax(-1).cpu()
    kl = (lp_s.exp() * (lp_s - lp_u)).sum(-1)
    unit = (vec.directions[2] / vec.directions[2].norm()).float()
    proj = cache[name][0, at].float().cpu() @ unit
    got_kl = torch.tensor([t.kl for t in row.tokens])
    got_proj = torch.tensor([t.projection for t in row.tokens])
    torch.testing.assert_close(
        got_kl, kl.clamp_min(0), atol=1e-4 + 1e-3 * float(kl.max()), rtol=1e-3
    )
    scale = 1e-3 * (1 + float(proj.abs().max()))
    torch.testing.assert_close(got_proj, proj, atol=scale, rtol=1e-3)
    assert (got_proj - (plain_cache[name][0, at].float().cpu() @ unit)).min() > 5.0  # +6|v|
    logp = sl.continuation_logprobs(tiny, [PROMPT], [reply], chat=False)[0]
    assert row.perplexity == pytest.approx(float(torch.exp(-logp.mean())), rel=1e-3)
    assert all(t.kl == 0.0 for t in ladder.rows[0].tokens)  # α = 0: nothing moves
    # the unsteered reply: its own residual's projection, not a placeholder
    base = sl.generate(tiny, [PROMPT], max_new_tokens=6, chat=False, return_tokens=True)
    b_ids = torch.cat([base.prompt_ids[0].cpu(), base.tokens[0].cpu()])[None]
    with torch.inference_mode():
        _, b_cache = tiny.run_with_cache(b_ids.to(tiny.cfg.device), names_filter=name)
    b_at = slice(n - 1, n - 1 + len(base.tokens[0]))
    want = b_cache[name][0, b_at].float().cpu() @ unit
    got = torch.tensor([t.projection for t in ladder.unsteered.tokens])
    torch.testing.assert_close(got, want, atol=scale, rtol=1e-3)
    assert got.abs().max() > 0


def test_the_generated_gate_leaves_the_first_token_unsteered(tiny, rand_vec):
    state = _state(alphas=(0, 4, 8), gate="generated")
    ladder = run_ladder(tiny, state, prepare_vector(rand_vec, state, tiny))
    for row in ladder.rows[1:]:
        assert row.tokens[0].kl == 0.0 and not row.tokens[0].steered
        assert all(t.steered for t in row.tokens[1:])
    first = _state(alphas=(0, 4, 8), gate="first:2")
    ladder = run_ladder(tiny, first, prepare_vector(rand_vec, first, tiny))
    assert [t.steered for t in ladder.rows[1].tokens] == [True, True, True, False, False, False]


def test_kl_budgets_become_the_calibrated_alphas(tiny, rand_vec):
    neutral = sl.data.neutral_texts(3)
    state = _state(kl_budgets=(0.02, 0.1))
    vec = prepare_vector(rand_vec, state, tiny)
    ladder = run_ladder(tiny, state, vec, neutral=neutral)
    expected = [sl.calibrate_alpha(tiny, vec, neutral, b, use_cache=False)[0] for b in (0.02, 0.1)]
    assert ladder.alphas == [0.0, *expected]
    assert ladder.rows[0].neutral_kl == 0.0
    for row, budget in zip(ladder.rows[1:], (0.02, 0.1), strict=True):
        assert row.neutral_kl == pytest.approx(budget, rel=0.05)


@pytest.mark.parametrize(("threshold", "fires"), [(1e6, False), (-1e6, True)])
def test_a_condition_that_does_not_fire_leaves_every_row_unsteered(
    tiny, rand_vec, threshold, fires
):
    cond = sl.Condition(torch.ones(tiny.cfg.d_model), layer=1, threshold=0.0)
    state = _state(alphas=(0, 4, 8), threshold=threshold)
    vec = prepare_vector(rand_vec.conditioned(cond), state, tiny)
    ladder = run_ladder(tiny, state, vec)
    assert all(r.fired is fires for r in ladder.rows)
    assert ladder.condition_projection is not None
    if not fires:
        assert all(r.text == ladder.unsteered.text for r in ladder.rows)
        assert all(t.kl == 0.0 and not t.steered for r in ladder.rows for t in r.tokens)
    else:
        assert any(t.kl > 0 for t in ladder.rows[-1].tokens)


def test_hooks_are_gone_after_a_failure_mid_ladder(tiny, rand_vec, monkeypatch):
    real = wb.steering

    @contextmanager
    def failing(*args, **kwargs):
        with real(*args, **kwargs) as handle:
            raise RuntimeError("boom")
            yield handle

    monkeypatch.setattr(wb, "steering", failing)
    state = _state(alphas=(0, 4, 8))
    with pytest.raises(RuntimeError, match="boom"):
        run_ladder(tiny, state, prepare_vector(rand_vec, state, tiny))
    assert no_hooks_left(tiny) and not sl.active_steering(tiny)


def test_prepare_vector_checks_layers_and_moves_the_threshold(tiny, rand_vec):
    with pytest.raises(ValueError, match=r"layers \[7\]"):
        prepare_vector(rand_vec, _state(layers=(7,)), tiny)
    assert prepare_vector(rand_vec, _state(layers=(3,)), tiny).layers == [3]
    cond = sl.Condition(torch.ones(tiny.cfg.d_model), layer=1, threshold=0.0)
    moved = prepare_vector(rand_vec.conditioned(cond), _state(threshold=2.5), tiny)
    assert moved.condition is not None and moved.condition.threshold == 2.5


def test_the_stages_are_reported_in_order_and_a_raise_stops_the_ladder(tiny, rand_vec):
    state = _state(alphas=(0, 4, 8))
    seen: list[str] = []
    run_ladder(tiny, state, rand_vec, neutral=["a neutral text"], progress=seen.append)
    assert seen == [
        "generating 4 replies",
        "neutral-text KL",
        "teacher-forcing the unsteered reply",
        "teacher-forcing α 0 (1/3)",
        "teacher-forcing α 4 (2/3)",
        "teacher-forcing α 8 (3/3)",
    ]

    def stop(message):
        if message.startswith("teacher-forcing α 4"):
            raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        run_ladder(tiny, state, rand_vec, progress=stop)
    assert no_hooks_left(tiny) and not sl.active_steering(tiny)
