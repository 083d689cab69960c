"""KL of steered from unsteered next-token distributions, and α calibrated to a KL budget."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import ENGINES, PROMPTS, assert_close_impl, no_hooks_left, on_device

import steerlens as sl
from steerlens.run import divergence, scoring
from steerlens.run.divergence import (
    calibrate_alpha,
    calibration_key,
    steering_divergence,
    texts_key,
)


def _forward_logprobs(model, text, vector, alpha):
    """One text through plain forward calls: its steered and unsteered next-token
    log-probabilities ``[pos, vocab]``, and its token ids."""
    ids = on_device(model, sl.tokens.tokenize(model, [text])[0])[None]
    with torch.no_grad():
        unsteered = model(ids).float().log_softmax(-1)[0]
        with sl.steering(model, vector, alpha=alpha):
            steered = model(ids).float().log_softmax(-1)[0]
    return steered, unsteered, ids[0]


def _kl(log_p, log_q):
    """``KL(p ‖ q)`` per position, averaged over positions, by ``torch.nn.functional.kl_div``
    (its ``input`` is the log of the second argument of the KL, its ``target`` the first)."""
    per_position = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    return float(per_position.mean())


@pytest.mark.parametrize("engine", ENGINES)
def test_divergence_matches_the_definition_row_by_row(tiny, rand_vec, engine):
    alphas = [0.0, 3.0, -6.0]
    got = steering_divergence(tiny, PROMPTS, rand_vec, alphas, batch_size=2, engine=engine)
    for text, a, d in zip(PROMPTS, alphas, got, strict=True):
        steered, unsteered, ids = _forward_logprobs(tiny, text, rand_vec, a)
        kl = _kl(steered, unsteered)
        nll = float(-steered[:-1].gather(-1, ids[1:, None]).sum())
        n = ids.shape[0] - 1
        assert d.n_tokens == n
        # KL is a small difference of two float32 implementations (batched fast path vs one
        # TL forward): its tolerance scales with the value, not float32 noise
        assert d.kl == pytest.approx(kl, rel=1e-2, abs=1e-5)
        assert d.nll == pytest.approx(nll, rel=1e-3)
        assert d.ppl == pytest.approx(math.exp(nll / n), rel=1e-3)
    assert got[0].kl == pytest.approx(0.0, abs=1e-6)  # α = 0 steers nothing
    assert got[1].kl > 1e-3
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("engine", ENGINES)
def test_kl_is_of_the_steered_from_the_unsteered_not_the_reverse(tiny, engine):
    # pushing the last layer's residual along one token's unembedding makes the steered
    # distribution much more peaked than the unsteered one: the two directions differ ~2x
    last = tiny.cfg.n_layers - 1
    towards = sl.SteeringVector({last: tiny.W_U[:, 7].detach().cpu().clone()}, "tiny-random")
    alpha = 30.0
    got = steering_divergence(tiny, PROMPTS, towards, alpha, engine=engine)
    for text, d in zip(PROMPTS, got, strict=True):
        steered, unsteered, _ = _forward_logprobs(tiny, text, towards, alpha)
        documented = _kl(steered, unsteered)  # KL(p_steered ‖ p_unsteered)
        reverse = _kl(unsteered, steered)  # KL(p_unsteered ‖ p_steered)
        assert abs(documented - reverse) > 0.1 * max(documented, reverse)
        assert d.kl == pytest.approx(documented, rel=1e-2)
        assert d.kl != pytest.approx(reverse, rel=5e-2)
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("engine", ENGINES)
def test_per_row_vectors_equal_one_at_a_time(tiny, rand_vec, engine):
    other = sl.SteeringVector({k: -2 * v for k, v in rand_vec.directions.items()}, "tiny-random")
    vecs = [rand_vec, other, rand_vec]
    batched = steering_divergence(tiny, PROMPTS, vecs, [2.0, 1.0, 4.0], engine=engine)
    for text, v, a, d in zip(PROMPTS, vecs, [2.0, 1.0, 4.0], batched, strict=True):
        (single,) = steering_divergence(tiny, [text], v, a, engine=engine)
        assert_close_impl(torch.tensor([d.kl, d.nll]), torch.tensor([single.kl, single.nll]))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_repeated_text_runs_unsteered_once(tiny, rand_vec, engine, monkeypatch):
    other = sl.SteeringVector({k: -2 * v for k, v in rand_vec.directions.items()}, "tiny-random")
    texts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0], PROMPTS[1]]
    vecs = [rand_vec, other, other, rand_vec, rand_vec]
    alphas = [2.0, 1.0, 4.0, 0.0, 3.0]
    unsteered_rows = []
    real = divergence._logprobs

    def counting(eng, batch, hooks):
        if all(fn.__name__ == "grab" for _, fn in hooks):  # none, or the residual's reader
            unsteered_rows.extend(batch.rows)
        return real(eng, batch, hooks)

    monkeypatch.setattr(divergence, "_logprobs", counting)
    got = steering_divergence(tiny, texts, vecs, alphas, batch_size=2, engine=engine)
    assert len(unsteered_rows) == 2  # one unsteered pass per distinct text
    unsteered_rows.clear()
    for text, v, a, d in zip(texts, vecs, alphas, got, strict=True):
        (single,) = steering_divergence(tiny, [text], v, a, engine=engine)
        assert_close_impl(torch.tensor([d.kl, d.nll]), torch.tensor([single.kl, single.nll]))
    assert got[3].kl == pytest.approx(0.0, abs=1e-6)
    assert len(unsteered_rows) == len(texts)  # one text a call: nothing to share
    # texts whose log-probabilities do not fit at once: groups of texts, each shared
    longest = max(len(t) for t in sl.tokens.tokenize(tiny, texts))  # each fits, not both
    monkeypatch.setattr(divergence, "SHARED_REFERENCE_BYTES", 4 * tiny.cfg.d_vocab * longest)
    assert divergence._text_groups(tiny, sl.tokens.tokenize(tiny, texts)) is not None
    unsteered_rows.clear()
    grouped = steering_divergence(tiny, texts, vecs, alphas, batch_size=2, engine=engine)
    assert len(unsteered_rows) == 2
    for a, b in zip(grouped, got, strict=True):
        assert_close_impl(torch.tensor([a.kl, a.nll]), torch.tensor([b.kl, b.nll]))
    # an open block may act differently row by row: every row then runs its own pass
    unsteered_rows.clear()
    with sl.steering(tiny, other, alpha=1.0):
        steering_divergence(tiny, texts, vecs, alphas, batch_size=2, engine=engine)
    assert len(unsteered_rows) == len(texts)
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("repeat", [False, True], ids=["distinct", "repeated"])
@pytest.mark.parametrize("engine", ENGINES)
def test_the_steered_pass_starts_at_the_first_steered_block(
    tiny, rand_vec, engine, repeat, monkeypatch
):
    # rand_vec steers blocks 2 and 3: the steered pass reuses blocks 0-1 of the unsteered one
    # (its own batch's, or the distinct texts' pass), and gives what whole passes give
    late = rand_vec
    texts = PROMPTS + PROMPTS[:2] if repeat else PROMPTS
    alphas = [float(a) for a in range(1, len(texts) + 1)]
    started = []
    real = type(sl.core.engines.resolve_engine(tiny, "hook_resid_post", engine)).forward_from

    def spy(self, resid, mask, layer):
        started.append((layer, resid.shape[0]))
        return real(self, resid, mask, layer)

    monkeypatch.setattr(sl.core.engines.base.Engine, "forward_from", spy)
    monkeypatch.setattr(sl.core.engines.hf.HFEngine, "forward_from", spy)
    got = steering_divergence(tiny, texts, late, alphas, batch_size=2, engine=engine)
    monkeypatch.setattr(divergence, "start_layer", lambda eng, pairs: None)
    whole = steering_divergence(tiny, texts, late, alphas, batch_size=2, engine=engine)
    if engine == "hf":  # the fast path starts midway; the TransformerLens path runs whole
        assert {layer for layer, _ in started} == {2}
        assert sum(b for _, b in started) == len(texts)
    else:
        assert started == []
    for a, b in zip(got, whole, strict=True):
        assert_close_impl(torch.tensor([a.kl, a.nll]), torch.tensor([b.kl, b.nll]))
    assert min(d.kl for d in got) > 1e-4
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_condition_read_below_the_steering_moves_the_start_down(
    tiny, rand_vec, engine, monkeypatch
):
    # the condition reads block 1, the vector steers blocks 2-3: the steered pass starts at
    # block 1 so that the reader decides every row, and matches whole passes row by row
    d = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(5))
    texts = PROMPTS * 2
    probe = steering_divergence(tiny, texts, rand_vec, 3.0, gate=sl.Condition(d, 1, 0.0))
    cut = sorted(x.projection for x in probe)[len(texts) // 2]  # some rows steered, some not
    gate = sl.Condition(d, 1, cut)
    started = []
    real = sl.core.engines.hf.HFEngine.forward_from

    def spy(self, resid, mask, layer):
        started.append(layer)
        return real(self, resid, mask, layer)

    monkeypatch.setattr(sl.core.engines.hf.HFEngine, "forward_from", spy)
    got = steering_divergence(tiny, texts, rand_vec, 3.0, gate=gate, engine=engine)
    monkeypatch.setattr(divergence, "start_layer", lambda eng, pairs: None)
    whole = steering_divergence(tiny, texts, rand_vec, 3.0, gate=gate, engine=engine)
    assert set(started) == ({1} if engine == "hf" else set())
    assert [x.steered for x in got] == [x.steered for x in whole]
    assert any(x.steered for x in got) and not all(x.steered for x in got)
    for a, b in zip(got, whole, strict=True):
        assert_close_impl(
            torch.tensor([a.kl, a.nll, a.projection]), torch.tensor([b.kl, b.nll, b.projection])
        )
        if not a.steered:
            assert a.kl == pytest.approx(0.0, abs=1e-6)
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_callers_reference_still_starts_repeated_texts_midway(
    tiny, rand_vec, engine, monkeypatch
):
    # texts repeated over vectors with the caller's reference (a calibration): each distinct
    # text runs the blocks below the first steered one once, every row starts there
    texts = PROMPTS * 3
    ref = divergence.reference_logprobs(tiny, PROMPTS, engine=engine) * 3
    vecs = [rand_vec, rand_vec.rescaled({2: 1.0, 3: 2.0}), rand_vec] * len(PROMPTS)
    vecs = [vecs[i] for i in range(len(texts))]
    started, captured = [], []
    real_from = sl.core.engines.hf.HFEngine.forward_from
    real_capture = sl.core.engines.hf.HFEngine.capture

    def spy(self, resid, mask, layer):
        started.append((layer, resid.shape[0]))
        return real_from(self, resid, mask, layer)

    def spy_capture(self, ids, mask, layers, hook):
        captured.append((tuple(layers), hook, ids.shape[0]))
        return real_capture(self, ids, mask, layers, hook)

    monkeypatch.setattr(sl.core.engines.hf.HFEngine, "forward_from", spy)
    monkeypatch.setattr(sl.core.engines.hf.HFEngine, "capture", spy_capture)
    got = steering_divergence(tiny, texts, vecs, 2.5, reference=ref, engine=engine)
    if engine == "hf":
        assert {layer for layer, _ in started} == {2} and sum(b for _, b in started) == 9
        assert {c[:2] for c in captured} == {((2,), "hook_resid_pre")}
        assert sum(c[2] for c in captured) == len(PROMPTS)  # each distinct text once
    else:
        assert started == [] and captured == []
    monkeypatch.setattr(divergence, "start_layer", lambda eng, pairs: None)
    whole = steering_divergence(tiny, texts, vecs, 2.5, reference=ref, engine=engine)
    for a, b in zip(got, whole, strict=True):
        assert_close_impl(torch.tensor([a.kl, a.nll]), torch.tensor([b.kl, b.nll]))
    assert min(d.kl for d in got) > 1e-4
    assert no_hooks_left(tiny)


def test_an_architecture_that_cannot_start_midway_runs_whole(tiny, rand_vec, monkeypatch):
    from steerlens.core.engines import hf

    eng = sl.core.engines.resolve_engine(tiny, "hook_resid_post", "hf")
    monkeypatch.setattr(hf, "_MIDWAY", type(hf._MIDWAY)())
    real = hf._upper_logits
    # an input-embedding scale (as Gemma's) that the probe must catch
    monkeypatch.setattr(hf, "_upper_logits", lambda t, r, m, layer: real(t, 2 * r, m, layer))
    assert not eng.can_start_at(1)
    with pytest.raises(ValueError, match="cannot start a pass at layer 1"):
        eng.forward_from(torch.zeros(1, 2, tiny.cfg.d_model), torch.ones(1, 2), 1)
    monkeypatch.setattr(hf, "_upper_logits", real)
    assert not eng.can_start_at(1)  # decided once per model and layer
    monkeypatch.setattr(hf, "_MIDWAY", type(hf._MIDWAY)())

    def refuses(*args):
        raise TypeError("inputs_embeds not taken")

    monkeypatch.setattr(hf, "_upper_logits", refuses)
    assert not eng.can_start_at(2)  # a probe that raises: whole passes, no error
    monkeypatch.setattr(hf, "_upper_logits", real)
    monkeypatch.setattr(hf, "_MIDWAY", type(hf._MIDWAY)())
    assert eng.can_start_at(1) and not eng.can_start_at(0)


def test_ppl_at_zero_alpha_is_the_models_own(tiny, rand_vec):
    (d,) = steering_divergence(tiny, PROMPTS[:1], rand_vec, 0.0)
    ids = sl.tokens.tokenize(tiny, PROMPTS[:1])[0]
    (lp,) = scoring.ids_logprobs(tiny, [ids[:1]], [ids[1:]])
    assert d.nll == pytest.approx(float(-lp.sum()), rel=1e-4)


def test_bad_input_is_refused(tiny, rand_vec):
    with pytest.raises(ValueError, match="2 vectors for 3 texts"):
        steering_divergence(tiny, PROMPTS, [rand_vec, rand_vec], 1.0)
    with pytest.raises(ValueError, match="alphas"):
        steering_divergence(tiny, PROMPTS, rand_vec, [1.0])
    with pytest.raises(TypeError):
        steering_divergence(tiny, "one string", rand_vec)
    with pytest.raises(ValueError, match="budget"):
        calibrate_alpha(tiny, rand_vec, PROMPTS, 0.0)
    with pytest.raises(ValueError, match="iterations"):
        calibrate_alpha(tiny, rand_vec, PROMPTS, 0.1, iterations=0)
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("engine", ENGINES)
def test_calibrated_alpha_meets_the_budget_for_every_vector(tiny, rand_vec, engine):
    small = sl.SteeringVector({k: 0.3 * v for k, v in rand_vec.directions.items()}, "tiny-random")
    big = sl.SteeringVector({k: 3.0 * v for k, v in rand_vec.directions.items()}, "tiny-random")
    budget = 0.02
    alphas = calibrate_alpha(tiny, [small, big], PROMPTS, budget, engine=engine, rtol=0.02)
    for v, a in zip([small, big], alphas, strict=True):
        kls = [d.kl for d in steering_divergence(tiny, PROMPTS, v, a, engine=engine)]
        assert sum(kls) / len(kls) == pytest.approx(budget, rel=0.03)
    # a 10x longer vector needs (about, not exactly: the model is not linear) 10x less α
    assert alphas[0] > 3 * alphas[1]


def test_calibration_is_cached_with_the_vector(tiny, rand_vec, monkeypatch):
    v = sl.SteeringVector(dict(rand_vec.directions), "tiny-random")
    (first,) = calibrate_alpha(tiny, v, PROMPTS, 0.01)
    ((key, entry),) = v.metadata["kl_alpha"].items()
    # a caller finds it from the budget and the texts (defaults: calibrate_alpha's settings)
    assert key == calibration_key(0.01, texts_key(sl.tokens.tokenize(tiny, PROMPTS)))
    assert entry["alpha"] == first and entry["n_texts"] == len(PROMPTS)
    assert isinstance(entry["reached"], bool)
    calls = []
    monkeypatch.setattr(divergence, "_mean_kl", lambda *a, **k: calls.append(1) or [0.0])
    assert calibrate_alpha(tiny, v, PROMPTS, 0.01) == [first]
    assert not calls
    calibrate_alpha(tiny, v, PROMPTS[:2], 0.01, iterations=1)  # other texts: not the cache
    assert calls


@pytest.mark.parametrize("engine", ENGINES)
def test_a_precomputed_reference_gives_the_same_divergence(tiny, rand_vec, engine):
    ref = divergence.reference_logprobs(tiny, PROMPTS, engine=engine)
    both = steering_divergence(tiny, PROMPTS, rand_vec, 3.0, engine=engine)
    reused = steering_divergence(tiny, PROMPTS, rand_vec, 3.0, engine=engine, reference=ref)
    for a, b in zip(both, reused, strict=True):
        assert a.kl == pytest.approx(b.kl, rel=1e-5, abs=1e-7) and a.nll == b.nll
    with pytest.raises(ValueError, match="reference rows"):
        steering_divergence(tiny, PROMPTS, rand_vec, 3.0, reference=ref[:1])


def test_a_budget_out_of_reach_stops_at_max_alpha(tiny, rand_vec):
    weak = sl.SteeringVector({k: 1e-4 * v for k, v in rand_vec.directions.items()}, "tiny-random")
    (a,) = calibrate_alpha(tiny, weak, PROMPTS, 5.0, max_alpha=8.0)
    assert a == 8.0
    fingerprint = texts_key(sl.tokens.tokenize(tiny, PROMPTS))
    entry = weak.metadata["kl_alpha"][calibration_key(5.0, fingerprint, max_alpha=8.0)]
    assert entry["reached"] is False and entry["kl"] < 5.0
    assert entry["alpha"] == 8.0


@pytest.mark.parametrize(
    "changed", [{"rtol": 0.05}, {"max_alpha": 32.0}, {"iterations": 5}, {"start": 2.0}]
)
def test_calibration_cache_is_not_reused_across_search_settings(
    tiny, rand_vec, monkeypatch, changed
):
    v = sl.SteeringVector(dict(rand_vec.directions), "tiny-random")
    calibrate_alpha(tiny, v, PROMPTS, 0.01)
    calls = []
    real = divergence._mean_kl
    monkeypatch.setattr(divergence, "_mean_kl", lambda *a, **k: calls.append(1) or real(*a, **k))
    calibrate_alpha(tiny, v, PROMPTS, 0.01)
    assert not calls  # same settings: the cache
    calibrate_alpha(tiny, v, PROMPTS, 0.01, **changed)
    assert calls  # another setting: the search runs again
    assert len(v.metadata["kl_alpha"]) == 2


def test_calibration_key_names_every_setting_exactly():
    key = calibration_key(0.05, "3f2a9c0d1b7e", start=1.0, max_alpha=64.0, iterations=12, rtol=0.02)
    assert key == "0.05@3f2a9c0d1b7e:start=1.0,max_alpha=64.0,iterations=12,rtol=0.02"
    assert calibration_key(0.05, "3f2a9c0d1b7e") == key  # calibrate_alpha's defaults
    others = [
        calibration_key(0.0500001, "3f2a9c0d1b7e"),  # not rounded away
        calibration_key(0.05, "000000000000"),
        calibration_key(0.05, "3f2a9c0d1b7e", start=2.0),
        calibration_key(0.05, "3f2a9c0d1b7e", max_alpha=32.0),
        calibration_key(0.05, "3f2a9c0d1b7e", iterations=5),
        calibration_key(0.05, "3f2a9c0d1b7e", rtol=0.01),
    ]
    assert len({key, *others}) == len(others) + 1


def _rise_dip_rise(scale, wiggle, depth):
    """A KL that is not monotone in α: α² with a multiplicative wave, so it rises, dips,
    rises again (by up to ``depth``) and crosses most budgets more than once."""
    return lambda a: scale * a * a * (1 + depth * math.sin(wiggle * a))


def _run_search(kls, budget, *, start=1.0, max_alpha=1e3, iterations=40, rtol=0.02):
    """``_root_search`` on fake KL functions, one per row, checking the bracket at every step."""
    brackets = [(0.0, None)] * len(kls)
    steps = []

    def observe(row, a, kl, lo, hi):
        prev_lo, prev_hi = brackets[row]
        assert prev_lo < a and (prev_hi is None or a < prev_hi)  # probed inside the bracket
        assert kl == kls[row](a)
        assert hi is None or lo < hi  # never inverted, never empty
        assert lo == 0.0 or kls[row](lo) < budget  # a sign change is kept
        assert hi is None or kls[row](hi) >= budget
        assert (lo, hi) in [(a, prev_hi), (prev_lo, a), (prev_lo, prev_hi)]
        brackets[row] = (lo, hi)
        steps.append(row)

    out = divergence._root_search(
        lambda rows, alphas: [kls[r](a) for r, a in zip(rows, alphas, strict=True)],
        len(kls),
        budget,
        start=start,
        max_alpha=max_alpha,
        iterations=iterations,
        rtol=rtol,
        on_step=observe,
    )
    return out, steps


def test_search_keeps_lo_below_hi_when_kl_is_not_monotone():
    rng = random.Random(0)
    for _ in range(50):
        kls = [
            _rise_dip_rise(10 ** rng.uniform(-3, 1), rng.uniform(0.5, 5), rng.uniform(0.3, 0.95))
            for _ in range(4)
        ]
        budget = 10 ** rng.uniform(-2, 1)
        out, steps = _run_search(kls, budget, start=10 ** rng.uniform(-1, 1))
        assert steps
        for f, (a, kl, reached) in zip(kls, out, strict=True):
            assert reached and kl == f(a)
            assert kl == pytest.approx(budget, rel=0.02)


def test_search_through_a_dip_below_the_budget():
    # KL rises past the budget by α = 1, dips under it on (1.5, 2.5), rises past it after
    def kl(a):
        return a * a if a <= 1 else 1.0 - 0.8 * math.sin(math.pi * (a - 1)) if a < 3 else a - 2

    out, steps = _run_search([kl], 0.5, start=2.0, rtol=0.01)
    ((a, got, reached),) = out
    assert reached and got == pytest.approx(0.5, rel=0.01) and got == kl(a)
    assert len(steps) > 1


def test_search_reports_an_unreachable_budget():
    out, _ = _run_search(
        [lambda a: a / (1 + a), lambda a: 0.5 + 0.4 * math.sin(a)], 2.0, max_alpha=50.0
    )
    (a0, kl0, reached0), (_, kl1, reached1) = out
    assert not reached0 and not reached1
    assert a0 == 50.0 and kl0 < 2.0 and kl1 < 2.0
