"""The compiled decoding engine (``engine="compiled"``) against the eager fast path.

Both run the same plain HF model on the same weights; the compiled engine decodes into a
static KV cache with a ``torch.compile``d step (inductor on this CPU) and holds the steering
as data. Greedy tokens must be the eager fast path's; logits agree to float32 rounding (two
implementations: a growing vs a static cache, compiled kernels). Every test checks which
path ran: the compiled step itself, not its eager fallback.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import PROMPTS, assert_close_impl, no_hooks_left
from torch._dynamo.exc import TorchDynamoException

import steerlens as sl
from steerlens.core.decoding import DecodingError
from steerlens.core.engines import compiled, resolve
from steerlens.core.engines import hf as hf_engine
from steerlens.core.engines.compiled import bucket, engine_stats
from steerlens.run import generation


@pytest.fixture
def path(monkeypatch):
    """Per decoded batch, the engine that ran: 'tl', 'eager fast path', or 'compiled' when
    the compiled engine ran and its compiled step decoded."""
    seen: list[str] = []
    real = generation._run_batch

    def spy(eng, input_ids, attention_mask, opts):
        steps = engine_stats().compiled_steps
        out = real(eng, input_ids, attention_mask, opts)
        if eng.name == "tl":
            seen.append("tl")
        elif eng.name == "hf":
            seen.append("eager fast path")
        else:
            ran = engine_stats().compiled_steps > steps
            seen.append("compiled" if ran else "compiled engine, eager steps")
        return out

    monkeypatch.setattr(generation, "_run_batch", spy)
    return seen


def _gen(model, prompts=PROMPTS, **kw):
    kw = {"max_new_tokens": 8, "return_logits": True, "progress_bar": False, **kw}
    out = sl.generate(model, prompts, **kw)
    return [t.tolist() for t in out.tokens], out.logits


def _same(model, **kw):
    """Generate on the eager fast path and the compiled engine; both must agree."""
    steps = engine_stats().compiled_steps
    want, want_logits = _gen(model, engine="hf", **kw)
    got, got_logits = _gen(model, engine="compiled", **kw)
    assert engine_stats().compiled_steps > steps  # the compiled step ran
    assert got == want
    for a, b in zip(got_logits, want_logits, strict=True):
        assert_close_impl(a, b)
    return got


def _vectors(d: int, seed: int = 0) -> list[sl.SteeringVector]:
    g = torch.Generator().manual_seed(seed)
    return [
        sl.SteeringVector({2: torch.randn(d, generator=g) * 2}),
        sl.SteeringVector({1: torch.randn(d, generator=g), 3: torch.randn(d, generator=g)}),
        sl.SteeringVector({2: torch.randn(d, generator=g), 3: torch.randn(d, generator=g)}),
    ]


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 17)] == [1, 2, 4, 4, 8, 32]
    assert bucket(10, 64) == 64
    assert bucket(65, 64) == 128


@pytest.mark.parametrize("gate", ["all", "prefill", sl.FirstK(2), "generated"])
def test_one_vector_per_row_alpha_every_gate(tiny, rand_vec, gate):
    """Left padding (three prompt lengths), α per row, each gate: the step counter's masks
    are the eager hooks' counted positions."""
    got = _same(tiny, steering=rand_vec, alpha=[0.0, 4.0, -6.0], gate=gate)
    assert got[0] == _gen(tiny, engine="hf")[0][0]  # α 0 is unsteered


def test_per_row_vectors_and_alpha(tiny):
    vecs = _vectors(tiny.cfg.d_model)
    got = _same(tiny, steering=vecs, alpha=[3.0, -2.0, 4.0], gate=sl.FirstK(3), batch_size=2)
    assert got != _gen(tiny, engine="hf", batch_size=2)[0]


def test_resid_pre_and_an_open_block_with_the_calls_own_vector(tiny, rand_vec):
    """Two slots on one layer (the block's, then the call's), in the eager hooks' order."""
    pre = sl.SteeringVector({2: rand_vec.directions[2]}, hook="hook_resid_pre")
    _same(tiny, steering=pre, alpha=5.0)
    with sl.steering(tiny, rand_vec, alpha=[1.0, -3.0, 2.0], gate="generated"):
        _same(tiny, steering=rand_vec, alpha=2.0, gate=sl.FirstK(1))
    assert no_hooks_left(tiny)


def test_eos_mid_batch(tiny_bridge, monkeypatch):
    free, _ = _gen(tiny_bridge, engine="hf", stop_at_eos=False)
    eos = free[1][3]  # row 1 stops at its fourth token
    monkeypatch.setattr(generation, "_eos_ids", lambda model: [eos])
    got = _same(tiny_bridge)
    assert len(got[1]) <= 3
    assert max(len(t) for t in got) > len(got[1])


def test_sampling_with_a_seed(tiny):
    kw = dict(do_sample=True, temperature=1.3, top_p=0.9, seed=5)
    got = _same(tiny, **kw)
    assert got != _same(tiny, **{**kw, "seed": 6})


def test_new_vectors_alphas_and_gates_reuse_the_graph(tiny_bridge, path):
    """Only shapes compile: the batch and cache buckets. A new vector, α or gate is data."""
    vecs = _vectors(tiny_bridge.cfg.d_model, seed=4)
    kw = dict(engine="compiled", max_new_tokens=4, chat=False)
    _gen(tiny_bridge, steering=vecs[1], alpha=1.0, **kw)
    graphs = engine_stats().graphs
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile would raise
        _gen(tiny_bridge, steering=vecs[1].normalized(), alpha=[1, 2, 3], gate="prefill", **kw)
        _gen(tiny_bridge, [*PROMPTS, "x"], steering=vecs[1], alpha=-1.0, gate=sl.FirstK(2), **kw)
    assert engine_stats().graphs == graphs  # 3 and 4 rows: batch bucket 4 ...
    assert path == ["compiled"] * 3  # no step fell back to eager
    _gen(tiny_bridge, PROMPTS * 2, steering=vecs[1], **kw)
    assert engine_stats().graphs == graphs + 1  # ... 6 rows: bucket 8, one more graph


def test_without_a_compiler_it_runs_the_eager_fast_path(tiny_bridge, monkeypatch, caplog):
    monkeypatch.setattr(compiled, "compile_blocker", lambda device, hf: "no C++ compiler found")
    steps = engine_stats().compiled_steps
    with caplog.at_level(logging.WARNING, logger="steerlens.core.engines.resolve"):
        got, _ = _gen(tiny_bridge, engine="compiled")
    assert "no C++ compiler found" in caplog.text
    assert engine_stats().compiled_steps == steps
    assert got == _gen(tiny_bridge, engine="hf")[0]


def test_a_step_that_fails_to_compile_runs_eagerly(monkeypatch, caplog, path):
    """A compile error (raised before the step runs) leaves that graph's step eager; an error
    while the step runs (out of memory, say) is raised, not retried on a half-written cache."""
    model = sl.load_model("tiny-random")  # fresh: its runners are built with the patch

    def no_compile(fn, **kw):
        def fail(*args):
            raise TorchDynamoException("backend exploded")

        return fail

    monkeypatch.setattr(torch, "compile", no_compile)
    eager = engine_stats().eager_steps
    with caplog.at_level(logging.WARNING, logger="steerlens.core.engines.compiled"):
        got, _ = _gen(model, engine="compiled")
    assert "backend exploded" in caplog.text
    assert engine_stats().eager_steps > eager
    assert path == ["compiled engine, eager steps"]
    assert got == _gen(model, engine="hf")[0]
    engine = compiled.compiled_steps(hf_engine.hf_twin(model))
    for runner in engine.runners.values():
        runner.broken.clear()
        runner.compiled = lambda *args: (_ for _ in ()).throw(RuntimeError("out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        _gen(model, engine="compiled")


def test_a_static_cache_that_is_wrong_is_refused(monkeypatch, path):
    """The cached-step check runs the engine's own steps (uncompiled) before first use."""
    from transformers import cache_utils

    model = sl.load_model("tiny-random")

    def forgetful(self, key_states, value_states, *args, **kwargs):
        return key_states, value_states  # attends to the new token only

    monkeypatch.setattr(cache_utils.StaticLayer, "update", forgetful)
    with pytest.raises(DecodingError, match="compiled engine"):
        sl.generate(model, PROMPTS, max_new_tokens=2, engine="compiled")
    monkeypatch.setattr(resolve, "auto_compiles", lambda model: True)
    auto, _ = _gen(model)  # auto routes around it, to the eager fast path
    assert path == ["eager fast path"]
    monkeypatch.undo()
    assert auto == _gen(model, engine="hf")[0]


def test_auto_compiles_where_it_is_the_default(tiny_bridge, rand_vec, monkeypatch, path):
    assert not resolve.auto_compiles(tiny_bridge)  # on a CPU, auto stays eager ...
    _gen(tiny_bridge, steering=rand_vec)
    assert path == ["eager fast path"]
    path.clear()
    monkeypatch.setattr(resolve, "auto_compiles", lambda model: True)  # ... as on CUDA
    _gen(tiny_bridge, steering=rand_vec)
    # a block with prompt_lengths (single-pass scoring) cannot run as data: auto stays eager
    with sl.steering(tiny_bridge, rand_vec, prompt_lengths=[3, 3, 3]):
        _gen(tiny_bridge)
        with pytest.raises(ValueError, match="engine='compiled' cannot run here"):
            _gen(tiny_bridge, engine="compiled")
    # a researcher's own TransformerLens hook: auto takes the TL path, where it fires
    with tiny_bridge.hooks(fwd_hooks=[(sl.resid_post(1), lambda x, *, hook: x + 1.0)]):
        _gen(tiny_bridge)
    assert path == ["compiled", "eager fast path", "tl"]


def test_foreign_hooks_are_refused_and_nothing_is_left_behind(tiny, rand_vec):
    own = [(sl.resid_post(1), lambda x, *, hook: x + 1.0)]
    with tiny.hooks(fwd_hooks=own), pytest.raises(ValueError, match="would not fire"):
        _gen(tiny, engine="compiled")
    with pytest.raises(ValueError, match="engine must be one of"):
        sl.cache_activations(tiny, PROMPTS, layers=[1], engine="compiled")
    with pytest.raises(KeyboardInterrupt), sl.steering(tiny, rand_vec, alpha=9.0):
        _gen(tiny, engine="compiled", max_new_tokens=2)
        raise KeyboardInterrupt
    assert no_hooks_left(tiny)
    _same(tiny)  # the buffers are rewritten for every batch: unsteered again


def test_static_caches_are_bounded_and_reused(tiny_bridge, monkeypatch):
    """The engine keeps at most MAX_CACHES static caches over all its batch buckets; a cache
    used again is emptied in place (the same tensors) and decodes right."""
    monkeypatch.setattr(compiled, "MAX_CACHES", 2)
    twin = hf_engine.hf_twin(tiny_bridge)
    engine = compiled.CompiledSteps(twin, compile=False)  # the same steps, uncompiled
    ids = torch.arange(4, 12).view(1, -1)
    mask = torch.ones_like(ids)

    def run(new: int) -> None:  # the prompt, then one token, against full forwards
        step = engine.steps(([], []), ids, mask, new)
        assert_close_impl(step(None), twin(input_ids=ids).logits[:, -1])
        nxt = torch.tensor([7])
        full = twin(input_ids=torch.cat([ids, nxt[None]], 1)).logits[:, -1]
        assert_close_impl(step(nxt), full)

    with torch.inference_mode():
        run(1)  # cache length 64
        keys = next(iter(engine.caches.values())).layers[0].keys
        assert not keys.is_inference()  # made under no_grad: any later call may update it
        run(100)  # 128
        run(1)  # 64 again: reused, emptied in place
        assert next(reversed(engine.caches.values())).layers[0].keys is keys
        run(200)  # 256: the least recently used (128) is freed
    assert [length for _, length in engine.caches] == [64, 256]
    engine.clear()
    assert not engine.caches


def test_sliding_window_models_are_not_compiled():
    """Their static cache layers keep the position as a Python int: every step would
    recompile. The platform check says so, and the eager fast path runs instead."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    small = dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    mistral = MistralForCausalLM(MistralConfig(**small, sliding_window=8))
    assert "sliding-window" in compiled.compile_blocker(torch.device("cpu"), mistral)
    llama = LlamaForCausalLM(LlamaConfig(**small))
    assert compiled.compile_blocker(torch.device("cpu"), llama) is None  # g++ is here
    assert "CPU and CUDA" in compiled.compile_blocker(torch.device("meta"), llama)


def test_a_wrong_steered_graph_is_refused_before_first_use(monkeypatch, path):
    """The first-use check runs a steered step too (per-row vectors and α, two gates, both hook
    points, in the buffers), compiled, against the eager steering hooks on a full forward: a
    graph that adds the steering wrong is refused although its unsteered step is right. Here
    the compiled graph adds it twice; the eager step (the same code, not traced) is right."""
    model = sl.load_model("tiny-random")
    twin = hf_engine.hf_twin(model)
    real = compiled._SteerState.add

    def twice_when_traced(self, s, resid):
        out = real(self, s, resid)
        return out + (out - resid) if torch.compiler.is_compiling() else out

    monkeypatch.setattr(compiled._SteerState, "add", twice_when_traced)
    why = compiled.check_compiled_engine(twin)
    assert why is not None and "steered step, compiled, first call" in why
    with pytest.raises(DecodingError, match="steered step, compiled"):
        sl.generate(model, PROMPTS, max_new_tokens=2, engine="compiled", progress_bar=False)
    monkeypatch.setattr(resolve, "auto_compiles", lambda model: True)
    _gen(model)  # auto routes around it, to the eager fast path
    assert path == ["eager fast path"]


def test_the_steered_probe_steers(tiny_bridge):
    """Not a vacuous check: the probe's steering moves the logits far beyond the tolerance,
    and its reference leaves no hook behind."""
    twin = hf_engine.hf_twin(tiny_bridge)
    probe = compiled._SteeredProbe.make(twin, 4)
    ids = torch.arange(3, 11).view(1, -1)
    with torch.inference_mode():
        plain = twin(input_ids=ids).logits[0, -1]
        steered = probe.reference(twin, ids, 0)[0, -1]
        unsteered_row = probe.reference(twin, ids, 2)[0, -1]  # the row with α 0
    assert float((steered - plain).norm() / plain.norm()) > 0.1
    torch.testing.assert_close(unsteered_row, plain)
    assert not any(layer._forward_hooks or layer._forward_pre_hooks for layer in twin.model.layers)


def test_dynamos_recompile_limit_is_a_counted_eager_fallback(monkeypatch, path):
    """Past its recompile limit the graph falls back to eager: counted, and the tokens are
    the eager fast path's."""
    model = sl.load_model("tiny-random")
    vec = _vectors(model.cfg.d_model)[0]
    kw = dict(engine="compiled", steering=vec, alpha=[1.0, 2.0, 3.0])
    _gen(model, max_new_tokens=4, **kw)  # cache 64: this runner's first graph
    monkeypatch.setattr(compiled, "RECOMPILE_ROOM", 1)  # no room for a second one
    fallbacks, eager = engine_stats().eager_fallbacks, engine_stats().eager_steps
    got, _ = _gen(model, max_new_tokens=70, **kw)  # cache 128: a second graph, refused
    assert engine_stats().eager_fallbacks == fallbacks + 1
    assert engine_stats().eager_steps > eager
    assert path[-1] == "compiled engine, eager steps"
    assert got == _gen(model, max_new_tokens=70, engine="hf", steering=vec, alpha=[1, 2, 3])[0]


def test_an_evicted_cache_of_a_warm_graph_is_counted_as_a_recapture(monkeypatch):
    """A static cache evicted from the ones kept comes back as new tensors: on a GPU its CUDA
    graph is recorded again. ``engine_stats().recaptures`` counts it; tokens are unchanged."""
    model = sl.load_model("tiny-random")
    monkeypatch.setattr(compiled, "MAX_CACHES", 1)
    first, _ = _gen(model, engine="compiled", max_new_tokens=4)  # cache 64: its graph warm
    before = engine_stats().recaptures
    _gen(model, engine="compiled", max_new_tokens=70)  # cache 128, a new graph, evicts 64
    assert engine_stats().recaptures == before  # a cold graph's first cache is no recapture
    again, _ = _gen(model, engine="compiled", max_new_tokens=4)  # 64 again: new tensors
    assert engine_stats().recaptures == before + 1
    assert again == first


def test_a_second_live_decoding_on_a_bucket_supersedes_the_first(tiny_bridge):
    """Two decodings on one batch bucket would share its buffers and caches: the later one
    owns them, and the earlier one is refused at its next step instead of reading them."""
    twin = hf_engine.hf_twin(tiny_bridge)
    engine = compiled.CompiledSteps(twin, compile=False)
    ids = torch.arange(4, 12).view(1, -1)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        first = engine.steps(([], []), ids, mask, 2)
        first(None)
        second = engine.steps(([], []), ids, mask, 2)
        assert_close_impl(second(None), twin(input_ids=ids).logits[:, -1])
        with pytest.raises(RuntimeError, match="superseded"):
            first(torch.tensor([7]))
        nxt = torch.tensor([7])
        full = twin(input_ids=torch.cat([ids, nxt[None]], 1)).logits[:, -1]
        assert_close_impl(second(nxt), full)  # the owner decodes on, unharmed
