"""Generation on every execution path: backend (bridge, hooked) x engine (tl, hf, compiled).

Each test that claims a path checks that the path ran (``spy_path``), so a test cannot pass
by silently exercising the other engine.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import ENGINES, PROMPTS, assert_close_impl, needs_hooked, no_hooks_left

import steerlens as sl
from steerlens.core._tl import has_hooked_transformer
from steerlens.core.engines import hf as hf_engine
from steerlens.core.engines.compiled import engine_stats
from steerlens.run import generation

GEN_ENGINES = [*ENGINES, "compiled"]


def _tokens(model, prompts, **kw):
    return [
        t.tolist()
        for t in sl.generate(model, prompts, max_new_tokens=8, return_tokens=True, **kw).tokens
    ]


@pytest.fixture
def spy_path(monkeypatch):
    """Records, per decoded batch, which engine ran: 'tl', 'hf-bound', 'hf-copy', or
    'compiled' when the compiled engine ran and its compiled step decoded the batch."""
    seen: list[str] = []
    real = generation._run_batch

    def spy(eng, input_ids, attention_mask, opts):
        steps = engine_stats().compiled_steps
        out = real(eng, input_ids, attention_mask, opts)
        if eng.name == "compiled":
            ran = engine_stats().compiled_steps > steps
            seen.append("compiled" if ran else "compiled, no compiled step")
        else:
            seen.append("tl" if eng.name == "tl" else ("hf-bound" if eng.bound else "hf-copy"))
        return out

    monkeypatch.setattr(generation, "_run_batch", spy)
    return seen


def _expected_path(model, engine):
    if engine in ("tl", "compiled"):
        return engine
    return "hf-bound" if hasattr(model, "original_model") else "hf-copy"


@pytest.mark.parametrize("engine", GEN_ENGINES)
@pytest.mark.parametrize("chat", [True, False])
def test_padded_batch_equals_one_at_a_time(tiny, engine, chat, spy_path):
    batched = _tokens(tiny, PROMPTS, chat=chat, batch_size=3, engine=engine)
    single = [_tokens(tiny, [p], chat=chat, engine=engine)[0] for p in PROMPTS]
    assert batched == single
    assert all(len(t) == 8 for t in batched)  # the tiny model never says EOS here
    assert set(spy_path) == {_expected_path(tiny, engine)}


@pytest.mark.parametrize("engine", GEN_ENGINES)
def test_per_row_alpha_equals_single_runs(tiny, rand_vec, engine, spy_path):
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0]]  # sorted by length != input order
    alphas = [0.0, 4.0, -4.0, 8.0]
    sweep = _tokens(tiny, prompts, steering=rand_vec, alpha=alphas, batch_size=3, engine=engine)
    single = [
        _tokens(tiny, [p], steering=rand_vec, alpha=a, engine=engine)[0]
        for p, a in zip(prompts, alphas, strict=True)
    ]
    assert sweep == single
    assert sweep[0] == _tokens(tiny, [prompts[0]], engine=engine)[0]  # alpha 0 == unsteered
    assert sweep[0] != sweep[3]  # and steering changes something
    assert set(spy_path) == {_expected_path(tiny, engine)}
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("engine", GEN_ENGINES)
def test_per_row_alpha_of_an_open_steering_block_follows_its_prompt(
    tiny, rand_vec, engine, spy_path
):
    """Batches are sorted by length ([2, 0] then [1] here): α must follow the prompt, not the
    batch position."""
    alphas = [0.0, 6.0, -6.0]
    with sl.steering(tiny, rand_vec, alpha=alphas):
        got = _tokens(tiny, PROMPTS, batch_size=2, engine=engine)
    single = [
        _tokens(tiny, [p], steering=rand_vec, alpha=a, engine="tl")[0]
        for p, a in zip(PROMPTS, alphas, strict=True)
    ]
    assert got == single
    assert spy_path[0] == _expected_path(tiny, engine)
    assert no_hooks_left(tiny)


@pytest.mark.parametrize("engine", GEN_ENGINES)
def test_per_row_vectors_equal_single_runs(tiny, engine, spy_path):
    g = torch.Generator().manual_seed(11)
    d = tiny.cfg.d_model
    vecs = [
        sl.SteeringVector({2: torch.randn(d, generator=g)}),
        sl.SteeringVector({1: torch.randn(d, generator=g), 3: torch.randn(d, generator=g)}),
        sl.SteeringVector({2: torch.randn(d, generator=g), 3: torch.randn(d, generator=g)}),
    ]
    alphas = [3.0, -2.0, 4.0]
    batch = _tokens(tiny, PROMPTS, steering=vecs, alpha=alphas, batch_size=2, engine=engine)
    single = [
        _tokens(tiny, [p], steering=v, alpha=a, engine=engine)[0]
        for p, v, a in zip(PROMPTS, vecs, alphas, strict=True)
    ]
    assert batch == single
    assert set(spy_path) == {_expected_path(tiny, engine)}
    with pytest.raises(ValueError, match="2 per-row vectors but there are 3 prompts"):
        sl.generate(tiny, PROMPTS, steering=vecs[:2])


@pytest.mark.parametrize("engine", GEN_ENGINES)
def test_gates_end_to_end(tiny, rand_vec, engine, spy_path):
    prompt = [PROMPTS[0]]
    kw = dict(steering=rand_vec, alpha=8.0, engine=engine)
    base = _tokens(tiny, prompt, engine=engine)[0]
    prefill = _tokens(tiny, prompt, gate="prefill", **kw)[0]
    first0 = _tokens(tiny, prompt, gate=sl.FirstK(0), **kw)[0]
    generated = _tokens(tiny, prompt, gate="generated", **kw)[0]
    all_ = _tokens(tiny, prompt, gate="all", **kw)[0]
    first_big = _tokens(tiny, prompt, gate=sl.FirstK(100), **kw)[0]
    assert prefill == first0
    assert first_big == all_
    assert generated[0] == base[0]  # the first token is predicted from the unsteered prompt
    assert generated != base
    assert prefill[0] == all_[0]
    assert set(spy_path) == {_expected_path(tiny, engine)}


@pytest.mark.parametrize("gate", ["all", "prefill", sl.FirstK(2), "generated"])
def test_fast_path_equals_transformerlens_hooks(tiny, rand_vec, gate):
    kw = dict(
        steering=rand_vec, alpha=[0.0, 3.0, -6.0], gate=gate, max_new_tokens=6, return_logits=True
    )
    tl = sl.generate(tiny, PROMPTS, engine="tl", **kw)
    hf = sl.generate(tiny, PROMPTS, engine="hf", **kw)
    assert [t.tolist() for t in tl.tokens] == [t.tolist() for t in hf.tokens]
    for a, b in zip(tl.logits, hf.logits, strict=True):
        assert_close_impl(b, a)


@needs_hooked
@pytest.mark.parametrize("engine", GEN_ENGINES)
def test_backends_agree(engine, spy_path):
    """A TransformerBridge and a HookedTransformer, each on the engine named: two different
    implementations of the same weights give the same tokens."""
    bridge = sl.load_model("tiny-random", backend="bridge")
    hooked = sl.load_model("tiny-random", backend="hooked")
    v = sl.SteeringVector({2: torch.randn(64, generator=torch.Generator().manual_seed(3))})
    for kw in ({}, {"steering": v, "alpha": [0.0, 5.0, 9.0], "gate": sl.FirstK(2)}):
        spy_path.clear()
        a = sl.generate(bridge, PROMPTS, max_new_tokens=6, return_logits=True, engine=engine, **kw)
        b = sl.generate(hooked, PROMPTS, max_new_tokens=6, return_logits=True, engine=engine, **kw)
        assert spy_path == [_expected_path(bridge, engine), _expected_path(hooked, engine)]
        assert [t.tolist() for t in a.tokens] == [t.tolist() for t in b.tokens]
        for x, y in zip(a.logits, b.logits, strict=True):
            assert_close_impl(x, y)


@pytest.mark.parametrize("engine", GEN_ENGINES)
def test_open_steering_block_steers_every_engine(tiny, rand_vec, engine, spy_path):
    """engine='hf' inside sl.steering() used to generate unsteered text silently."""
    with sl.steering(tiny, rand_vec, alpha=3.0, gate=sl.FirstK(2)):
        inside = _tokens(tiny, PROMPTS, engine=engine)
    assert spy_path == [_expected_path(tiny, engine)]
    expected = _tokens(tiny, PROMPTS, steering=rand_vec, alpha=3.0, gate=sl.FirstK(2), engine="tl")
    assert inside == expected
    assert inside != _tokens(tiny, PROMPTS, engine="tl")


def test_fast_path_first_built_inside_a_per_row_block(rand_vec):
    """The build-time probe runs unsteered even when a per-row block is already open."""
    model = sl.load_model("tiny-random")  # fresh: no fast path built yet
    alphas = [0.0, 5.0, -5.0]
    with sl.steering(model, rand_vec, alpha=alphas):
        got = _tokens(model, PROMPTS, batch_size=2, engine="hf")
    assert no_hooks_left(model)
    single = [
        _tokens(model, [p], steering=rand_vec, alpha=a, engine="tl")[0]
        for p, a in zip(PROMPTS, alphas, strict=True)
    ]
    assert got == single


def test_auto_takes_the_bound_fast_path_on_a_bridge_and_tl_on_hooked(tiny, rand_vec, spy_path):
    _tokens(tiny, PROMPTS[:1], steering=rand_vec)
    with sl.steering(tiny, rand_vec):  # open steering() blocks are carried, not a reason for TL
        _tokens(tiny, PROMPTS[:1])
    expected = "hf-bound" if hasattr(tiny, "original_model") else "tl"  # auto never copies
    assert spy_path == [expected, expected]


def test_other_hooks_keep_auto_on_tl_and_refuse_hf(tiny, spy_path):
    d = tiny.cfg.d_model
    own = [(sl.resid_post(1), lambda x, *, hook: x + 1.0)]  # a researcher's own TL hook
    with tiny.hooks(fwd_hooks=own):
        assert "TransformerLens hook" in str(hf_engine.fast_path_blocker(tiny))
        inside = _tokens(tiny, PROMPTS)
        with pytest.raises(ValueError, match="would not fire on the fast path"):
            sl.generate(tiny, PROMPTS, max_new_tokens=2, engine="hf")
    assert spy_path == ["tl"]
    assert inside == _tokens(
        tiny, PROMPTS, steering=sl.SteeringVector({1: torch.ones(d)}), engine="tl"
    )
    calls = []  # a plain PyTorch hook (nnsight, pyvene, user code) on one of the model's modules
    handle = tiny.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        assert "PyTorch hook" in str(hf_engine.fast_path_blocker(tiny))
        _tokens(tiny, PROMPTS[:1])
        assert calls  # it fired: auto took the TransformerLens path
        with pytest.raises(ValueError, match="would not fire on the fast path"):
            sl.generate(tiny, PROMPTS, max_new_tokens=2, engine="hf")
    finally:
        handle.remove()
    assert no_hooks_left(tiny)


def test_bridge_fast_path_shares_the_weights_and_sees_edits():
    model = sl.load_model("tiny-random")
    twin = hf_engine.hf_twin(model)
    own = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in own for p in twin.parameters())  # no second copy
    assert all(b.data_ptr() in {x.data_ptr() for x in model.buffers()} for b in twin.buffers())
    before = _tokens(model, PROMPTS, engine="hf")
    weight = next(p for n, p in model.named_parameters() if ".1." in n and "mlp" in n)
    with torch.no_grad():  # an ablation, as a researcher would do it
        weight.mul_(0.0)
    assert hf_engine.fast_path_blocker(model) is None
    after_hf = _tokens(model, PROMPTS, engine="hf")
    assert after_hf == _tokens(model, PROMPTS, engine="tl")
    assert after_hf != before


@needs_hooked
def test_hooked_fast_path_is_a_checked_copy():
    model = sl.load_model("tiny-random", backend="hooked")
    vec = sl.SteeringVector({2: torch.ones(64)})
    assert "HookedTransformer" in str(hf_engine.fast_path_blocker(model))  # auto: no copy
    kw = dict(steering=vec, max_new_tokens=6)
    assert sl.generate(model, PROMPTS, engine="hf", **kw) == sl.generate(
        model, PROMPTS, engine="tl", **kw
    )
    with torch.no_grad():
        next(iter(model.parameters())).add_(1.0)
    with pytest.raises(ValueError, match="weights changed"):
        sl.generate(model, PROMPTS, engine="hf", **kw)
    fresh = sl.load_model("tiny-random", backend="hooked")
    with torch.no_grad():
        next(iter(fresh.parameters())).add_(1.0)
    with pytest.raises(ValueError, match="weights changed"):  # edited before any copy existed
        sl.generate(fresh, PROMPTS, max_new_tokens=2, engine="hf")


def test_fast_path_resid_pre(tiny):
    d = tiny.cfg.d_model
    pre = sl.SteeringVector(
        {2: torch.randn(d, generator=torch.Generator().manual_seed(5))}, hook="hook_resid_pre"
    )
    kw = dict(steering=pre, alpha=5.0, max_new_tokens=6)
    assert sl.generate(tiny, PROMPTS, engine="tl", **kw) == sl.generate(
        tiny, PROMPTS, engine="hf", **kw
    )
    mid = sl.SteeringVector({2: torch.ones(d)}, hook="hook_resid_mid")
    with pytest.raises(ValueError, match="engine='hf' works on"):
        sl.generate(tiny, PROMPTS, steering=mid, engine="hf")
    with sl.steering(tiny, mid):
        assert "hook_resid_mid" in str(hf_engine.fast_path_blocker(tiny))
    with pytest.raises(ValueError, match="engine must be"):
        sl.generate(tiny, PROMPTS, engine="vlm")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_the_vllm_engine_without_vllm_says_where_it_runs(tiny_bridge):
    with pytest.raises(ImportError, match=r"engine='vllm' needs vLLM.*make test-serve"):
        sl.generate(tiny_bridge, PROMPTS, engine="vllm")
    with pytest.raises(ValueError, match="greedily"):
        sl.generate(tiny_bridge, PROMPTS, engine="vllm", do_sample=True)


@pytest.mark.parametrize("engine", GEN_ENGINES)
def test_return_logits_matches_greedy_tokens(tiny, engine, spy_path):
    out = sl.generate(tiny, PROMPTS[:2], max_new_tokens=5, return_logits=True, engine=engine)
    assert isinstance(out, sl.Generation)
    for toks, logits in zip(out.tokens, out.logits, strict=True):
        assert logits.shape == (5, tiny.cfg.d_vocab)
        assert logits.argmax(-1).tolist() == toks.tolist()
    assert spy_path == [_expected_path(tiny, engine)]


@pytest.mark.parametrize("engine", GEN_ENGINES)
def test_sampling_is_seeded(tiny, engine, spy_path):
    kw = dict(do_sample=True, temperature=1.5, top_k=50, seed=123, engine=engine)
    a = _tokens(tiny, PROMPTS, **kw)
    b = _tokens(tiny, PROMPTS, **kw)
    c = _tokens(tiny, PROMPTS, **{**kw, "seed": 7})
    assert a == b
    assert a != c
    assert set(spy_path) == {_expected_path(tiny, engine)}


def test_bad_inputs(tiny, rand_vec):
    with pytest.raises(TypeError, match="not one string"):
        sl.generate(tiny, "hello")
    with pytest.raises(ValueError, match="alpha has 2 values but there are 3 prompts"):
        sl.generate(tiny, PROMPTS, steering=rand_vec, alpha=[1.0, 2.0])
    with pytest.raises(ValueError, match="needs a steering vector"):
        sl.generate(tiny, PROMPTS, alpha=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="max_new_tokens"):
        sl.generate(tiny, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="gate must be"):
        sl.generate(tiny, PROMPTS, steering=rand_vec, gate="half")
    with (
        pytest.raises(ValueError, match="alpha has 2 values but the call has 3 inputs"),
        sl.steering(tiny, rand_vec, alpha=[1.0, 2.0]),
    ):
        sl.generate(tiny, PROMPTS, max_new_tokens=2, engine="tl")
    assert sl.generate(tiny, []) == []
    assert no_hooks_left(tiny)


def test_format_chat_uses_model_template(tiny_bridge):
    (text,) = sl.tokens.format_chat(tiny_bridge, ["hey"], system="be brief")
    assert (
        text
        == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_fast_path_that_cannot_be_built_falls_back_in_auto(monkeypatch):
    model = sl.load_model("tiny-random")
    monkeypatch.setattr(
        hf_engine, "bind_twin", lambda hf: (_ for _ in ()).throw(RuntimeError("no"))
    )
    with pytest.raises(RuntimeError, match="no"):
        sl.generate(model, PROMPTS, max_new_tokens=2, engine="hf")
    auto = _tokens(model, PROMPTS)
    assert "could not be built" in str(hf_engine.fast_path_blocker(model))
    assert auto == _tokens(model, PROMPTS, engine="tl")


def test_the_probe_refuses_a_twin_that_disagrees(monkeypatch):
    model = sl.load_model("tiny-random")
    real = hf_engine.bind_twin

    def wrong(hf):
        twin = real(hf)
        layer = twin.model.layers[1].mlp.down_proj
        layer.weight = torch.nn.Parameter(layer.weight.detach() * 1.5)  # not the bridge's
        return twin

    monkeypatch.setattr(hf_engine, "bind_twin", wrong)
    with pytest.raises(ValueError, match="does not reproduce the bridge"):
        sl.generate(model, PROMPTS, max_new_tokens=2, engine="hf")
    assert "does not reproduce" in str(hf_engine.fast_path_blocker(model))
    assert _tokens(model, PROMPTS) == _tokens(model, PROMPTS, engine="tl")


@pytest.mark.parametrize("processing", ["full", "light"])
def test_replaced_parameters_are_checked_again(processing):
    """Replacing a parameter object (not an in-place edit) breaks the binding: the fast path
    binds and probes again. After TransformerLens 3.9's full processing the bridge computes
    with processed copies it holds itself, so it no longer agrees with its HF module: the probe
    refuses the fast path and auto runs the TransformerLens path, which gives what the bridge
    computes. After the light processing (the default on a GPU), and on TransformerLens 4 in
    either mode, the bridge computes with the HF module's own parameters: the rebound twin
    agrees and the fast path stays."""
    own_copies = processing == "full" and has_hooked_transformer()  # TransformerLens 3.x
    model = sl.load_model("tiny-random", weight_processing=processing)
    hf_engine.hf_twin(model)
    before = _tokens(model, PROMPTS, engine="tl")
    down = model.original_model.model.layers[1].mlp
    down = next(m for n, m in down.named_modules() if n.endswith("down_proj"))
    target = getattr(down, "_original_component", down)
    target.weight = torch.nn.Parameter(target.weight.detach() * 0.0)  # a new object
    assert not hf_engine._still_bound(model)
    if own_copies:
        with pytest.raises(ValueError, match="does not reproduce the bridge"):
            sl.generate(model, PROMPTS, max_new_tokens=2, engine="hf")
        assert _tokens(model, PROMPTS) == _tokens(model, PROMPTS, engine="tl") == before
    else:
        fast = _tokens(model, PROMPTS, engine="hf")
        assert fast == _tokens(model, PROMPTS, engine="tl") != before  # the new weights
        assert hf_engine._still_bound(model)
