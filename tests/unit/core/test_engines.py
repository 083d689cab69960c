"""The Engine interface: the TL and HF engines' forward, logits_at, capture and hooks give the
model's own values, one engine per test case (each checks which engine it got); the compiled
engine's decoding is tested against the eager engines in test_compiled.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import ENGINES, PROMPTS, assert_close_impl, no_hooks_left, on_device

import steerlens as sl
from steerlens.core.engines import (
    ENGINES as ENGINE_NAMES,
)
from steerlens.core.engines import (
    Engine,
    HFEngine,
    TLEngine,
    resolve_engine,
)
from steerlens.core.engines._binding import decoder_layers
from steerlens.core.engines.compiled import CompiledEngine, compile_blocker

PACKAGE = Path(sl.__file__).parent


def _batch(model):
    """Two right-padded rows of different lengths."""
    ids = sl.tokens.tokenize(model, PROMPTS[:2])
    width = max(int(x.numel()) for x in ids)
    padded = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, x in enumerate(ids):
        padded[i, : x.numel()], mask[i, : x.numel()] = x, 1
    return on_device(model, padded), on_device(model, mask), [int(x.numel()) for x in ids]


def _centred(x):
    return x - x.mean(-1, keepdim=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_forwards_captures_and_picks_the_models_values(tiny, engine):
    eng = resolve_engine(tiny, "hook_resid_post", engine)
    assert isinstance(eng, Engine) and eng.name == engine
    assert isinstance(eng, {"tl": TLEngine, "hf": HFEngine}[engine])
    ids, mask, lengths = _batch(tiny)
    with torch.inference_mode():
        ref = tiny(ids, attention_mask=mask)
        _, cache = tiny.run_with_cache(ids, attention_mask=mask)
        logits = eng.forward(ids, mask)
        picked = eng.logits_at(ids, mask, [[0, lengths[0] - 1], [lengths[1] - 1]])
        acts = eng.capture(ids, mask, [1, 3], "hook_resid_pre")
    for row, n in enumerate(lengths):  # real tokens only (padding is free to differ)
        assert_close_impl(_centred(logits[row, :n]), _centred(ref[row, :n]))
        for got, layer in zip(acts, [1, 3], strict=True):
            assert_close_impl(got[row, :n], cache[sl.resid_pre(layer)][row, :n])
    # logits_at: the forward's own positions (the same engine, so the same arithmetic up to
    # the positions the unembedding ran on)
    assert_close_impl(picked[0], logits[0, [0, lengths[0] - 1]])
    assert_close_impl(picked[1], logits[1, [lengths[1] - 1]])
    assert eng.bound == (engine == "tl" or hasattr(tiny, "original_model"))


@pytest.mark.parametrize("engine", ENGINES)
def test_hooks_act_on_the_engines_pass_and_are_gone_after_an_error(tiny, rand_vec, engine):
    eng = resolve_engine(tiny, "hook_resid_post", engine)
    ids, mask, _ = _batch(tiny)
    pairs = sl.steering_hooks(tiny, rand_vec, 3.0)
    with torch.inference_mode():
        plain = eng.capture(ids, mask, [3], "hook_resid_post")[0]
        with eng.hooks(pairs):
            steered = eng.capture(ids, mask, [3], "hook_resid_post")[0]
        with pytest.raises(RuntimeError, match="boom"), eng.hooks(pairs):
            raise RuntimeError("boom")
        again = eng.capture(ids, mask, [3], "hook_resid_post")[0]
    assert no_hooks_left(tiny)
    if engine == "hf":  # the fast path's hooks live on the twin's decoder layers
        layers = decoder_layers(eng.twin)  # type: ignore[attr-defined]
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in layers)
    assert torch.equal(again, plain)  # the same engine, the same arithmetic: nothing left on
    # layer 3's output = its steered input's pass + 3·v at layer 3 (and layer 2's shift)
    assert not torch.allclose(steered, plain)


def test_hooked_reports_open_steering_on_each_engine(tiny, rand_vec):
    for engine in ENGINES:
        assert not resolve_engine(tiny, "hook_resid_post", engine).hooked()
    with sl.steering(tiny, rand_vec, 1.0):
        for engine in ENGINES:
            eng = resolve_engine(tiny, "hook_resid_post", engine)
            assert eng.hooked(), engine
            if engine == "hf":
                assert len(eng.carried) == 2  # type: ignore[attr-defined]  (two layers)


def test_the_compiled_engine_is_an_engine_for_decoding_only(tiny_bridge, rand_vec):
    with pytest.raises(ValueError, match="engine must be one of 'auto', 'tl', 'hf'"):
        resolve_engine(tiny_bridge, "hook_resid_post", "compiled")
    if compile_blocker(torch.device("cpu"), None) is not None:
        pytest.skip("torch.compile cannot run on this machine")
    pairs = sl.steering_hooks(tiny_bridge, rand_vec, 2.0)
    eng = resolve_engine(tiny_bridge, "hook_resid_post", "compiled", decoding=True, pairs=pairs)
    assert isinstance(eng, CompiledEngine) and eng.name == "compiled"
    assert len(eng.slots[0]) == 2  # the call's two layers, held as data


def test_engine_names_are_written_once():
    """No module spells the engine names out again: they come from ``engines.names``."""
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "names.py" and path.parent.name == "engines":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Literal":
                values = [getattr(e, "value", None) for e in ast.walk(node.slice)]
                if {"tl", "hf"} <= set(values):
                    spelled.append(str(path.relative_to(PACKAGE)))
    assert spelled == []
    assert ENGINE_NAMES == ("auto", "tl", "hf", "compiled")
