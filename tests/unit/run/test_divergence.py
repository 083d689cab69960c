"""KL of steered from unsteered next-token distributions, and α calibrated to a KL budget."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ENGINES, PROMPTS, assert_close_impl, no_hooks_left, on_device

import steerlens as sl
from steerlens.run import divergence
from steerlens.run.divergence import calibrate_alpha, steering_divergence


def _by_hand(model, text, vector, alpha):
    """The definition, one text at a time through plain forward calls."""
    ids = on_device(model, sl.tokens.tokenize(model, [text])[0])[None]
    with torch.no_grad():
        lq = model(ids).float().log_softmax(-1)[0]
        with sl.steering(model, vector, alpha=alpha):
            lp = model(ids).float().log_softmax(-1)[0]
    kl = (lp.exp() * (lp - lq)).sum(-1).mean()
    nll = -lp[:-1].gather(-1, ids[0, 1:, None]).sum()
    return float(kl), float(nll), ids.shape[1] - 1


@pytest.mark.parametrize("engine", ENGINES)
def test_divergence_matches_the_definition_row_by_row(tiny, rand_vec, engine):
    alphas = [0.0, 3.0, -6.0]
    got = steering_divergence(tiny, PROMPTS, rand_vec, alphas, batch_size=2, engine=engine)
    for text, a, d in zip(PROMPTS, alphas, got, strict=True):
        kl, nll, n = _by_hand(tiny, text, rand_vec, a)
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
def test_per_row_vectors_equal_one_at_a_time(tiny, rand_vec, engine):
    other = sl.SteeringVector({k: -2 * v for k, v in rand_vec.directions.items()}, "tiny-random")
    vecs = [rand_vec, other, rand_vec]
    batched = steering_divergence(tiny, PROMPTS, vecs, [2.0, 1.0, 4.0], engine=engine)
    for text, v, a, d in zip(PROMPTS, vecs, [2.0, 1.0, 4.0], batched, strict=True):
        (single,) = steering_divergence(tiny, [text], v, a, engine=engine)
        assert_close_impl(torch.tensor([d.kl, d.nll]), torch.tensor([single.kl, single.nll]))


def test_ppl_at_zero_alpha_is_the_models_own(tiny, rand_vec):
    (d,) = steering_divergence(tiny, PROMPTS[:1], rand_vec, 0.0)
    ids = sl.tokens.tokenize(tiny, PROMPTS[:1])[0]
    (lp,) = sl.run.scoring.ids_logprobs(tiny, [ids[:1]], [ids[1:]])
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
    (entry,) = v.metadata["kl_alpha"].values()
    assert entry["alpha"] == first and entry["n_texts"] == len(PROMPTS)
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
    (entry,) = weak.metadata["kl_alpha"].values()
    assert entry["reached"] is False and entry["kl"] < 5.0
