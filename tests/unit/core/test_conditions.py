"""``sl.Condition``: a per-row gate decided at the prompt from its pooled activation.

Every engine (``tl``, ``hf``, ``compiled``) on both model classes, float32: a row below the
threshold gives exactly the unsteered tokens and logits, a row above exactly the
unconditional steered ones (the same engine, the same batch); the decisions are the
projection rule on the returned projections; the engines agree on decisions and tokens.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PROMPTS, assert_close_impl, no_hooks_left

import steerlens as sl
from steerlens.core.conditions import Conditional, parse_gate_name, split_gate
from steerlens.core.engines.compiled import engine_stats
from steerlens.core.gates import Gate

ALL_PROMPTS = [*PROMPTS, "what is the weather like", "tell me a story about a cat"]
ENGINES = ["tl", "hf", "compiled"]


def _gen(model, engine, **kw):
    """Generate on ``engine``; on "compiled", the compiled step itself must have decoded
    (not the eager fast path a blocked or failed compile falls back to)."""
    kw = {"max_new_tokens": 6, "return_logits": True, "progress_bar": False, **kw}
    steps, fallbacks = engine_stats().compiled_steps, engine_stats().eager_fallbacks
    out = sl.generate(model, ALL_PROMPTS, engine=engine, **kw)
    if engine == "compiled":
        assert engine_stats().compiled_steps > steps
        assert engine_stats().eager_fallbacks == fallbacks
    return out


def _direction(model, seed=3):
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def _vector(model, layer=2, seed=1, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return sl.SteeringVector({layer: torch.randn(model.cfg.d_model, generator=g) * scale})


def _split_threshold(projections):
    """A threshold with some rows above and some below (between two middle projections)."""
    p = sorted(projections)
    return (p[1] + p[2]) / 2


def _assert_rows(out, above, below):
    """Row by row: steered rows equal ``above``, the others ``below``, tokens and logits."""
    assert any(out.conditions) and not all(out.conditions)
    for i, on in enumerate(out.conditions):
        ref = above if on else below
        assert out.tokens[i].tolist() == ref.tokens[i].tolist(), i
        assert torch.equal(out.logits[i], ref.logits[i]), i


@pytest.mark.parametrize("engine", ENGINES)
def test_rows_below_are_unsteered_and_rows_above_unconditional_exactly(tiny, engine):
    vec, d = _vector(tiny), _direction(tiny)
    probe = _gen(tiny, engine, steering=vec, alpha=2.0, gate=sl.Condition(d, 2, 0.0))
    cond = sl.Condition(d, 2, _split_threshold(probe.projections))
    out = _gen(tiny, engine, steering=vec, alpha=2.0, gate=cond)
    assert out.projections == probe.projections  # the decision reads the unsteered prompt
    assert out.conditions == [p > cond.threshold for p in out.projections]
    _assert_rows(out, _gen(tiny, engine, steering=vec, alpha=2.0), _gen(tiny, engine))
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("engine", ENGINES)
def test_per_row_vectors_alpha_and_first_k_compose(tiny, engine):
    """Left padding, a vector and an α per row, ``Condition & FirstK(2)``, batches of 2."""
    vecs = [_vector(tiny, seed=s) for s in range(len(ALL_PROMPTS))]
    alphas = [2.0, -3.0, 1.5, 4.0, 0.5]
    kw = dict(steering=vecs, alpha=alphas, batch_size=2)
    d = _direction(tiny)
    probe = _gen(tiny, engine, gate=sl.Condition(d, 1, 0.0) & sl.FirstK(2), **kw)
    cond = sl.Condition(d, 1, _split_threshold(probe.projections), pool="last")
    probe = _gen(tiny, engine, gate=cond & sl.FirstK(2), **kw)
    cond = cond.with_threshold(_split_threshold(probe.projections))
    out = _gen(tiny, engine, gate=sl.FirstK(2) & cond, **kw)  # either order
    plain = _gen(tiny, engine, batch_size=2)  # the same batches: the same arithmetic
    _assert_rows(out, _gen(tiny, engine, gate=sl.FirstK(2), **kw), plain)


def test_engines_agree_on_decisions_and_tokens(tiny):
    vec, d = _vector(tiny), _direction(tiny)
    probe = _gen(tiny, "tl", steering=vec, alpha=2.0, gate=sl.Condition(d, 2, 0.0))
    cond = sl.Condition(d, 2, _split_threshold(probe.projections))
    runs = {e: _gen(tiny, e, steering=vec, alpha=2.0, gate=cond) for e in ENGINES}
    for e in ("hf", "compiled"):
        assert runs[e].conditions == runs["tl"].conditions, e
        assert [t.tolist() for t in runs[e].tokens] == [t.tolist() for t in runs["tl"].tokens]
        assert_close_impl(torch.tensor(runs[e].projections), torch.tensor(runs["tl"].projections))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("pool", ["mean", "last"])
def test_projections_are_the_pooled_prompt_activation_on_the_direction(tiny, pool, engine):
    """The same pooling as ``cache_activations`` (content tokens for "mean", the last token
    for "last"), left-padded in sorted batches of 2: projections match, decisions are exactly
    ``projection > threshold``."""
    d = _direction(tiny)
    cond = sl.Condition(d, 2, 0.0, pool=pool)
    out = _gen(tiny, engine, steering=_vector(tiny, layer=3), gate=cond, batch_size=2)
    acts = sl.cache_activations(tiny, ALL_PROMPTS, [2], pool=pool, progress_bar=False)
    want = cond.project(acts[:, 0])
    assert_close_impl(torch.tensor(out.projections), want)
    assert out.conditions == [p > 0.0 for p in out.projections]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_condition_in_an_open_block_gates_generate(tiny, engine):
    """A conditioned ``sl.steering`` block (carried onto the fast path and into the compiled
    engine's slots) steers what ``generate`` runs, alone and under the call's own vector;
    ``Generation`` reports the block's decisions when the call has no condition of its own."""
    vec, other, d = _vector(tiny), _vector(tiny, layer=3, seed=7), _direction(tiny)
    with sl.steering(tiny, vec, alpha=2.0, gate=sl.Condition(d, 2, 0.0)) as h:
        probe = _gen(tiny, engine)
    assert probe.projections == h.condition.projections.tolist()
    cond = sl.Condition(d, 2, _split_threshold(probe.projections))
    with sl.steering(tiny, vec, alpha=2.0, gate=cond):
        out = _gen(tiny, engine)
        both = _gen(tiny, engine, steering=other, alpha=1.5)
    _assert_rows(out, _gen(tiny, engine, steering=vec, alpha=2.0), _gen(tiny, engine))
    with sl.steering(tiny, vec, alpha=2.0):
        above = _gen(tiny, engine, steering=other, alpha=1.5)
    below = _gen(tiny, engine, steering=other, alpha=1.5)
    assert both.conditions == out.conditions
    _assert_rows(both, above, below)
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("engine", ENGINES)
def test_soft_alpha_is_alpha_times_the_sigmoid_of_the_margin(tiny, engine):
    vec, d = _vector(tiny), _direction(tiny)
    soft = sl.Condition(d, 2, 5.0, soft=30.0)
    out = _gen(tiny, engine, steering=vec, alpha=2.0, gate=soft)
    w = torch.sigmoid((torch.tensor(out.projections) - 5.0) / 30.0)
    assert (w > 0).all() and (w < 1).all()
    per_row = _gen(tiny, engine, steering=vec, alpha=torch.tensor(2.0) * w)
    for i in range(len(ALL_PROMPTS)):
        assert out.tokens[i].tolist() == per_row.tokens[i].tolist()
        assert torch.equal(out.logits[i], per_row.logits[i])


def test_the_compiled_engine_does_not_recompile_for_a_new_condition(tiny_bridge):
    vec = _vector(tiny_bridge)
    _gen(tiny_bridge, "compiled", steering=vec, gate=sl.Condition(_direction(tiny_bridge), 2, 0.0))
    graphs = engine_stats().graphs
    for seed, threshold in ((4, -5.0), (5, 7.0)):
        cond = sl.Condition(_direction(tiny_bridge, seed), 2, threshold, soft=None)
        _gen(tiny_bridge, "compiled", steering=vec, alpha=3.0, gate=cond)
    assert engine_stats().graphs == graphs


def test_single_pass_scoring_under_a_conditioned_block(tiny):
    """``continuation_logprobs`` inside ``sl.steering(..., gate=cond)``: below-threshold rows
    score exactly as unsteered, the others exactly as unconditionally steered."""
    vec, d = _vector(tiny), _direction(tiny)
    tails = ["fine thanks", "hello", "ok then", "sunny", "once upon a time"]

    def score():
        return sl.continuation_logprobs(tiny, ALL_PROMPTS, tails)

    plain = score()
    with sl.steering(tiny, vec, alpha=2.0):
        steered = score()
    with sl.steering(tiny, vec, alpha=2.0, gate=sl.Condition(d, 2, 0.0)) as h:
        score()
        threshold = _split_threshold(h.condition.projections.tolist())
    with sl.steering(tiny, vec, alpha=2.0, gate=sl.Condition(d, 2, threshold)) as h:
        got = score()
        on = h.condition.decisions.tolist()
        projections = h.condition.projections
    # the prompt's content tokens are pooled, never the continuation's
    acts = sl.cache_activations(tiny, ALL_PROMPTS, [2], pool="mean", progress_bar=False)
    assert_close_impl(projections, sl.Condition(d, 2, threshold).project(acts[:, 0]))
    assert any(on) and not all(on)
    for i, flag in enumerate(on):
        assert torch.equal(got[i], (steered if flag else plain)[i]), i
    assert no_hooks_left(tiny)


def test_a_conditioned_block_is_removed_after_an_exception(tiny):
    cond = sl.Condition(_direction(tiny), 1, 0.0)
    with pytest.raises(RuntimeError, match="boom"), sl.steering(tiny, _vector(tiny), gate=cond):
        sl.generate(tiny, ["hi"], max_new_tokens=2, progress_bar=False)
        raise RuntimeError("boom")
    assert no_hooks_left(tiny)


def test_bad_conditions_are_errors_before_any_work(tiny):
    d = _direction(tiny)
    with pytest.raises(ValueError, match="finite"):
        sl.Condition(d, 2, float("nan"))
    with pytest.raises(ValueError, match="1-D"):
        sl.Condition(d[None], 2, 0.0)
    with pytest.raises(ValueError, match="finite floating"):
        sl.Condition(torch.full((4,), float("inf")), 2, 0.0)
    with pytest.raises(ValueError, match="pool"):
        sl.Condition(d, 2, 0.0, pool="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="soft"):
        sl.Condition(d, 2, 0.0, soft=0.0)
    with pytest.raises(ValueError, match="layer"):
        sl.Condition(d, -1, 0.0)
    vec = _vector(tiny)
    for bad, match in (
        (sl.Condition(d, 99, 0.0), "no hook point"),  # a layer the model lacks
        (sl.Condition(torch.ones(7), 2, 0.0), "d_model 7"),
        (sl.Condition(d, 3, 0.0), "runs before it"),  # read after the steering at layer 2
        (sl.Condition(d, 2, 0.0, hook="hook_resid_post"), None),  # the same point: fine
    ):
        if match is None:
            sl.generate(tiny, ["hi"], steering=vec, gate=bad, max_new_tokens=1)
            continue
        with pytest.raises(ValueError, match=match):
            sl.generate(tiny, ["hi"], steering=vec, gate=bad, progress_bar=False)
        with pytest.raises(ValueError, match=match), sl.steering(tiny, vec, gate=bad):
            pass
    assert no_hooks_left(tiny)
    pre = sl.SteeringVector({2: vec.directions[2]}, hook="hook_resid_pre")
    with pytest.raises(ValueError, match="runs before it"):  # block 2's input, then its output
        sl.generate(tiny, ["hi"], steering=pre, gate=sl.Condition(d, 2, 0.0), progress_bar=False)
    sl.generate(tiny, ["hi"], steering=vec, gate=sl.Condition(d, 2, 0.0, hook="hook_resid_pre"))
    with pytest.raises(ValueError, match="steering vector"):
        sl.generate(tiny, ["hi"], gate=sl.Condition(d, 2, 0.0), progress_bar=False)


def test_gate_algebra_and_names():
    d = torch.ones(4)
    c = sl.Condition(d, 1, 0.5)
    assert split_gate(c) == (Gate.parse("all"), c)
    both = c & sl.FirstK(3)
    assert isinstance(both, Conditional) and split_gate(both) == (Gate.parse(sl.FirstK(3)), c)
    assert (sl.FirstK(3) & c) == both and ("prefill" & c).gate == Gate.parse("prefill")
    assert (both & "prefill").gate == Gate.parse("prefill")  # positions intersect
    assert parse_gate_name("condition&first:4") == (sl.FirstK(4), "condition")
    assert parse_gate_name("condition:topic") == ("all", "topic")
    assert parse_gate_name("prefill") == ("prefill", None)
    for bad in ("condition&condition:x", "first:1&prefill", "condition:", ""):
        with pytest.raises(ValueError):
            parse_gate_name(bad)


def test_files_round_trip_and_exports_warn(tmp_path, tiny):
    d = _direction(tiny)
    cond = sl.Condition(d, 2, 1.25, pool="last", soft=0.5, metadata={"fit": "test"})
    back = sl.Condition.load(cond.save(tmp_path / "c.safetensors"))
    assert torch.equal(back.direction, d) and back.describe() == cond.describe()
    vec = _vector(tiny).conditioned(cond)
    again = sl.SteeringVector.load(vec.save(tmp_path / "v.safetensors"))
    assert again.condition is not None and again.condition.describe() == cond.describe()
    assert torch.equal(again.directions[2], vec.directions[2])
    with pytest.raises(ValueError, match="d_model"):
        _vector(tiny).conditioned(sl.Condition(torch.ones(3), 2, 0.0))
    # a vector carrying its condition steers as the gate would
    a = _gen(tiny, "hf", steering=vec, alpha=2.0)
    b = _gen(tiny, "hf", steering=_vector(tiny), alpha=2.0, gate=cond)
    assert a.projections == b.projections and a.texts == b.texts
    with pytest.raises(ValueError, match="give one"):
        _gen(tiny, "hf", steering=vec, gate=cond)
    # lm-eval and GGUF cannot hold a condition: the unconditional vector, with a warning
    with pytest.warns(UserWarning, match="cannot express a condition"):
        path = vec.to_lm_eval(tmp_path / "steer.pt")
    assert torch.equal(sl.SteeringVector.from_lm_eval(path).directions[2], vec.directions[2])
    with pytest.warns(UserWarning, match="cannot express a condition"):
        gguf = vec.to_gguf(tmp_path / "v.gguf")
    assert torch.equal(sl.SteeringVector.from_gguf(gguf).directions[2], vec.directions[2])


def test_divergence_steers_only_the_texts_the_condition_selects(tiny):
    texts = ["the cat sat on the mat today", "a short text", "numbers one two three four"]
    vec, d = _vector(tiny), _direction(tiny)
    probe = sl.steering_divergence(tiny, texts, vec, 2.0, gate=sl.Condition(d, 2, 0.0))
    p = sorted(x.projection for x in probe)
    cond = sl.Condition(d, 2, (p[0] + p[1]) / 2)
    rows = sl.steering_divergence(tiny, texts, vec, 2.0, gate=cond)
    full = sl.steering_divergence(tiny, texts, vec, 2.0)
    assert [r.steered for r in rows] == [r.projection > cond.threshold for r in rows]
    for r, f in zip(rows, full, strict=True):
        assert r.kl == (f.kl if r.steered else 0.0)
    assert math.isfinite(rows[0].projection)


def test_cache_activations_under_a_conditioned_block_pools_as_it_pools_itself(tiny):
    """Inside a conditioned block, ``cache_activations``' own passes are prompts too: the
    condition reads each text's content tokens, the same mean it returns outside the block."""
    d = _direction(tiny)
    acts = sl.cache_activations(tiny, ALL_PROMPTS, [2], pool="mean", progress_bar=False)
    with sl.steering(tiny, _vector(tiny, layer=3), gate=sl.Condition(d, 2, 0.0)) as h:
        sl.cache_activations(tiny, ALL_PROMPTS, [3], pool="mean", progress_bar=False)
        projections = h.condition.projections
    assert_close_impl(projections, sl.Condition(d, 2, 0.0).project(acts[:, 0]))
