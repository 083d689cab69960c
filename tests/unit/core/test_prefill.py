"""Generation's shared prompt pass on the fast path (``steerlens.core.engines._prefill``):
copies of a prompt in one decoding batch (a sweep's cells) run the decoder layers below the
lowest hooked one once; tokens and logits are those of whole passes and of single runs.

A test that compares the two passes checks which one ran (``shared``), so it cannot pass on
the other path."""

from __future__ import annotations

import weakref

import pytest
import torch
from conftest import PROMPTS, assert_close_impl, no_hooks_left

import steerlens as sl
from steerlens.core.engines import _prefill, resolve_engine
from steerlens.core.engines import hf as hf_engine
from steerlens.core.hooks import steering_hooks
from steerlens.core.tokens import encode_prompts, pad

ROWS = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[1]]
ALPHAS = [0.0, 4.0, -4.0, 8.0, 2.0, -2.0]


@pytest.fixture
def shared(monkeypatch):
    """Per decoded batch whose engine would share its prompt pass, whether it did (False:
    every row was distinct, so the plain pass ran)."""
    seen: list[bool] = []
    real = hf_engine.shared_prefill

    def spy(*args, **kw):
        out = real(*args, **kw)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(hf_engine, "shared_prefill", spy)
    monkeypatch.setattr(_prefill, "_EXACT", weakref.WeakKeyDictionary())  # probes run afresh
    return seen


def _vec(model, layers, seed=1):
    g = torch.Generator().manual_seed(seed)
    return sl.SteeringVector(
        {layer: torch.randn(model.cfg.d_model, generator=g) for layer in layers}
    )


def _gen(model, prompts, **kw):
    kw = {"max_new_tokens": 6, "return_logits": True, "progress_bar": False, "engine": "hf", **kw}
    return sl.generate(model, prompts, **kw)


def _whole(monkeypatch):
    """Whole prompt passes from here on (as where the probe refuses)."""
    monkeypatch.setattr(hf_engine, "prefill_exact", lambda twin, below: False)


def _belows(monkeypatch):
    """The ``below`` of each shared pass from here on (wrapping the ``shared`` spy)."""
    seen: list[int] = []
    real = hf_engine.shared_prefill

    def below(*args, **kw):
        seen.append(kw["below"])
        return real(*args, **kw)

    monkeypatch.setattr(hf_engine, "shared_prefill", below)
    return seen


def _rows(output):
    """The batch size of a decoder layer's output (a tensor, or a tuple led by one)."""
    return (output[0] if isinstance(output, tuple) else output).shape[0]


def _same(got, ref):
    assert [t.tolist() for t in got.tokens] == [t.tolist() for t in ref.tokens]
    for a, b in zip(got.logits, ref.logits, strict=True):
        assert_close_impl(a, b)


@pytest.mark.parametrize("gate", ["all", "prefill", sl.FirstK(2), "generated"])
def test_copies_of_a_prompt_equal_whole_passes_and_single_runs(tiny, monkeypatch, shared, gate):
    vec = _vec(tiny, [2, 3])
    got = _gen(tiny, ROWS, steering=vec, alpha=ALPHAS, gate=gate)
    assert shared == [True]
    single = [
        _gen(tiny, [p], steering=vec, alpha=a, gate=gate).tokens[0].tolist()
        for p, a in zip(ROWS, ALPHAS, strict=True)
    ]
    assert shared == [True] + [False] * len(ROWS)  # one row a batch: nothing to share
    _whole(monkeypatch)
    whole = _gen(tiny, ROWS, steering=vec, alpha=ALPHAS, gate=gate)
    assert len(shared) == 1 + len(ROWS)  # the whole passes never asked
    _same(got, whole)
    assert [t.tolist() for t in got.tokens] == single
    assert no_hooks_left(tiny)


def test_per_row_vectors_share_below_their_lowest_layer(tiny, monkeypatch, shared):
    vecs = [_vec(tiny, [1, 3], seed=s) if s % 2 else _vec(tiny, [2], seed=s) for s in range(6)]
    seen = _belows(monkeypatch)
    got = _gen(tiny, ROWS, steering=vecs, alpha=ALPHAS)
    assert seen == [1]
    _whole(monkeypatch)
    _same(got, _gen(tiny, ROWS, steering=vecs, alpha=ALPHAS))


def test_a_condition_reads_every_row_of_a_shared_pass(tiny, monkeypatch, shared):
    """The condition's reader (layer 1) and the steering (layer 2) sit above the shared
    layers: per row the same projection and decision as whole passes."""
    g = torch.Generator().manual_seed(3)
    cond = sl.Condition(torch.randn(tiny.cfg.d_model, generator=g), 1, 0.0)
    vec = _vec(tiny, [2])
    probe = _gen(tiny, ROWS, steering=vec, alpha=2.0, gate=cond)
    cond = sl.Condition(cond.direction, 1, sorted(probe.projections)[2])
    got = _gen(tiny, ROWS, steering=vec, alpha=2.0, gate=cond)
    assert shared == [True, True]
    _whole(monkeypatch)
    whole = _gen(tiny, ROWS, steering=vec, alpha=2.0, gate=cond)
    assert got.projections == pytest.approx(whole.projections, rel=1e-5, abs=1e-6)
    assert got.conditions == whole.conditions and any(got.conditions) and not all(got.conditions)
    _same(got, whole)


def test_a_hook_at_the_first_layer_runs_whole_passes(tiny, shared):
    got = _gen(tiny, ROWS, steering=_vec(tiny, [0, 2]), alpha=ALPHAS)
    assert shared == []
    assert len(got.tokens) == len(ROWS)


def test_distinct_rows_run_the_plain_pass(tiny, shared):
    _gen(tiny, PROMPTS, steering=_vec(tiny, [2]), alpha=[1.0, 2.0, 3.0])
    assert shared == [False]


@pytest.mark.parametrize("fault", ["wrong", "raises"])
def test_a_model_that_fails_the_probe_runs_whole_passes(tiny, monkeypatch, shared, fault):
    """The probe (``prefill_exact``) compares a shared pass with a plain one before any
    batch uses it: a shared pass that disagrees, or raises, is never used."""

    def broken(twin, ids, mask, pos, *, below):
        if fault == "raises":
            raise RuntimeError("this cache cannot be spliced")
        logits, cache = real(twin, ids, mask, pos, below=below)
        return logits + 1.0, cache

    real = _prefill.shared_prefill
    monkeypatch.setattr(_prefill, "shared_prefill", broken)
    vec = _vec(tiny, [2, 3])
    got = _gen(tiny, ROWS, steering=vec, alpha=ALPHAS)
    assert shared == []
    twin = hf_engine.hf_twin(tiny)
    assert _prefill._EXACT[twin] == {2: False}
    monkeypatch.setattr(_prefill, "shared_prefill", real)
    monkeypatch.setattr(_prefill, "_EXACT", weakref.WeakKeyDictionary())
    _same(got, _gen(tiny, ROWS, steering=vec, alpha=ALPHAS))
    assert shared == [True]


@pytest.mark.parametrize("where", [0, 3])  # in the shared lower pass, in the upper one
def test_an_error_in_a_shared_pass_leaves_no_hook_and_restores_the_layers(tiny, where):
    twin = hf_engine.hf_twin(tiny)
    layers = twin.model.layers

    def fails(module, args, output):
        raise RuntimeError("boom")

    assert _prefill.prefill_exact(twin, 2)
    handle = layers[where].register_forward_hook(fails)
    try:
        ids = torch.tensor([[5, 6, 7], [5, 6, 7]])
        mask = torch.ones_like(ids)
        pos = torch.arange(3).expand(2, 3)
        with pytest.raises(RuntimeError, match="boom"):
            _prefill.shared_prefill(twin, ids, mask, pos, below=2)
    finally:
        handle.remove()
    assert twin.model.layers is layers
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in layers)


def test_the_probe_sets_the_layers_hooks_aside_and_puts_them_back(tiny):
    twin = hf_engine.hf_twin(tiny)
    layers = twin.model.layers
    calls: list[int] = []
    handle = layers[1].register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        with pytest.raises(RuntimeError, match="inside"), _prefill.bare_layers(twin):
            assert not layers[1]._forward_hooks
            twin(input_ids=torch.tensor([[5, 6, 7]]))
            raise RuntimeError("inside")
        assert calls == [] and len(layers[1]._forward_hooks) == 1
    finally:
        handle.remove()


def test_layers_of_different_kinds_are_refused_without_a_probe(tiny, monkeypatch, shared):
    """A decoder that picks each layer's mask by its place in the list it runs (sliding
    window and full attention layers) would read the wrong ones in the upper pass."""
    twin = hf_engine.hf_twin(tiny)
    n = len(twin.model.layers)
    kinds = ["sliding_attention", "full_attention"] * n
    monkeypatch.setattr(twin.config, "layer_types", kinds[:n], raising=False)
    assert not _prefill.prefill_exact(twin, 2)
    _gen(tiny, ROWS, steering=_vec(tiny, [2, 3]), alpha=ALPHAS)
    assert shared == []


def test_a_hook_put_on_a_lower_layer_by_anyone_else_keeps_whole_passes(tiny, shared):
    """Which layers are free is read from the layers: a hook there (a researcher's own on
    the twin, say) sees every row of the batch."""
    twin = hf_engine.hf_twin(tiny)
    rows: list[int] = []
    handle = twin.model.layers[0].register_forward_hook(lambda m, a, o: rows.append(_rows(o)))
    try:
        _gen(tiny, ROWS, steering=_vec(tiny, [2, 3]), alpha=ALPHAS, max_new_tokens=1)
    finally:
        handle.remove()
    assert shared == [] and rows == [len(ROWS)]


def test_resid_pre_steering_shares_below_its_layer(tiny, monkeypatch, shared):
    g = torch.Generator().manual_seed(5)
    vec = sl.SteeringVector({2: torch.randn(tiny.cfg.d_model, generator=g)}, hook="hook_resid_pre")
    got = _gen(tiny, ROWS, steering=vec, alpha=ALPHAS)
    assert shared == [True]
    _whole(monkeypatch)
    _same(got, _gen(tiny, ROWS, steering=vec, alpha=ALPHAS))


def test_nested_contexts_carry_an_open_block_once(tiny, rand_vec):
    with sl.steering(tiny, rand_vec, alpha=2.0):
        eng = resolve_engine(tiny, "hook_resid_post", "hf")
        layer = hf_engine.hf_twin(tiny).model.layers[2]
        with eng.hooks([]):
            assert len(layer._forward_hooks) == 1
            with eng.hooks([]):
                assert len(layer._forward_hooks) == 1
        assert not layer._forward_hooks


def test_nested_hooks_share_below_the_lowest_open_layer(tiny, monkeypatch, shared):
    """A context opened inside another: the outer one's hooks (layer 1) still act, so the
    shared layers stop below them, not below the inner one's (layer 3)."""
    seen = _belows(monkeypatch)
    eng = resolve_engine(tiny, "hook_resid_post", "hf")
    enc = pad(tiny, encode_prompts(tiny, ROWS), side="left")
    outer = steering_hooks(tiny, _vec(tiny, [1]), torch.tensor(ALPHAS))
    inner = steering_hooks(tiny, _vec(tiny, [3], seed=2), 2.0)

    def first_two_steps():
        with torch.inference_mode(), eng.hooks(outer), eng.hooks(inner):
            step = eng.steps(enc.input_ids, enc.attention_mask, 2)
            first = step(None)
            return torch.stack([first, step(first.argmax(-1))])

    got = first_two_steps()
    assert seen == [1] and shared == [True]
    _whole(monkeypatch)
    assert_close_impl(got, first_two_steps())
    assert seen == [1]
