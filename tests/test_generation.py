from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, no_hooks_left

import steerlens as sl


def _tokens(model, prompts, **kw):
    return [
        t.tolist()
        for t in sl.generate(model, prompts, max_new_tokens=8, return_tokens=True, **kw).tokens
    ]


@pytest.mark.parametrize("chat", [True, False])
def test_padded_batch_equals_one_at_a_time(tiny, chat):
    batched = _tokens(tiny, PROMPTS, chat=chat, batch_size=3)
    single = [_tokens(tiny, [p], chat=chat)[0] for p in PROMPTS]
    assert batched == single
    assert all(len(t) == 8 for t in batched)  # the tiny model never says EOS here


def test_per_row_alpha_equals_single_runs(tiny, rand_vec):
    prompt = PROMPTS[0]
    alphas = [0.0, 4.0, -4.0, 8.0]
    sweep = _tokens(tiny, [prompt] * 4, steering=rand_vec, alpha=alphas)
    single = [_tokens(tiny, [prompt], steering=rand_vec, alpha=a)[0] for a in alphas]
    assert sweep == single
    assert sweep[0] == _tokens(tiny, [prompt])[0]  # alpha 0 == unsteered
    assert len({tuple(t) for t in sweep}) > 1  # and steering changes something
    assert no_hooks_left(tiny)


def test_gates_end_to_end(tiny, rand_vec):
    prompt = [PROMPTS[0]]
    base = _tokens(tiny, prompt)[0]
    prefill = _tokens(tiny, prompt, steering=rand_vec, alpha=8.0, gate="prefill")[0]
    first0 = _tokens(tiny, prompt, steering=rand_vec, alpha=8.0, gate=sl.FirstK(0))[0]
    generated = _tokens(tiny, prompt, steering=rand_vec, alpha=8.0, gate="generated")[0]
    all_ = _tokens(tiny, prompt, steering=rand_vec, alpha=8.0, gate="all")[0]
    first_big = _tokens(tiny, prompt, steering=rand_vec, alpha=8.0, gate=sl.FirstK(100))[0]
    assert prefill == first0
    assert first_big == all_
    assert generated[0] == base[0]  # the first token is predicted from the unsteered prompt
    assert generated != base
    assert prefill[0] == all_[0]


def test_return_logits_matches_greedy_tokens(tiny):
    out = sl.generate(tiny, PROMPTS[:2], max_new_tokens=5, return_logits=True)
    assert isinstance(out, sl.Generation)
    for toks, logits in zip(out.tokens, out.logits, strict=True):
        assert logits.shape == (5, tiny.cfg.d_vocab)
        assert logits.argmax(-1).tolist() == toks.tolist()


def test_sampling_is_seeded(tiny):
    kw = dict(do_sample=True, temperature=1.5, top_k=50, seed=123)
    a = _tokens(tiny, PROMPTS, **kw)
    b = _tokens(tiny, PROMPTS, **kw)
    c = _tokens(tiny, PROMPTS, **{**kw, "seed": 7})
    assert a == b
    assert a != c


def test_backends_agree(tiny_bridge):
    hooked = sl.load_model("tiny-random", backend="hooked")
    v = sl.SteeringVector({2: torch.randn(64, generator=torch.Generator().manual_seed(3))})
    for kw in ({}, {"steering": v, "alpha": [0.0, 5.0, 9.0], "gate": sl.FirstK(2)}):
        assert _tokens(tiny_bridge, PROMPTS, **kw) == _tokens(hooked, PROMPTS, **kw)


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
    assert sl.generate(tiny, []) == []
    assert no_hooks_left(tiny)


def test_format_chat_uses_model_template(tiny_bridge):
    (text,) = sl.format_chat(tiny_bridge, ["hey"], system="be brief")
    assert (
        text
        == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.integration
def test_embedded_model_answers_sensibly_offline(embedded):
    out = sl.generate(
        embedded, ["What is the capital of France?"], max_new_tokens=24, return_tokens=True
    )
    assert "Paris" in out.texts[0]
    assert len(out.tokens[0]) < 24  # stopped at its EOS
    assert "<|im_end|>" not in out.texts[0]


@pytest.mark.integration
def test_embedded_steering_changes_output_and_batch_is_exact(embedded):
    layers = sl.default_layers(embedded)
    assert layers == list(range(15, 22))
    pos, neg = sl.cache_activations(
        embedded,
        ["I love this, it is wonderful!", "I hate this, it is terrible!"],
        layers=layers,
        pool="mean",
        progress_bar=False,
    )
    vec = sl.SteeringVector(
        {lyr: pos[i] - neg[i] for i, lyr in enumerate(layers)}, model_name=sl.model_name(embedded)
    )
    prompts = ["Describe your day.", "Write one sentence about the sea."]
    alphas = [0.0, 6.0]
    batched = sl.generate(
        embedded,
        [prompts[0]] * 2 + [prompts[1]] * 2,
        steering=vec,
        alpha=alphas * 2,
        max_new_tokens=12,
    )
    single = [
        sl.generate(embedded, [p], steering=vec, alpha=a, max_new_tokens=12)[0]
        for p in prompts
        for a in alphas
    ]
    assert batched == single
    assert batched[0] != batched[1]


@pytest.mark.parametrize("gate", ["all", "prefill", sl.FirstK(2), "generated"])
def test_fast_path_equals_transformerlens_hooks(tiny, rand_vec, gate):
    kw = dict(
        steering=rand_vec, alpha=[0.0, 3.0, -6.0], gate=gate, max_new_tokens=6, return_logits=True
    )
    tl = sl.generate(tiny, PROMPTS, engine="tl", **kw)
    hf = sl.generate(tiny, PROMPTS, engine="hf", **kw)
    assert [t.tolist() for t in tl.tokens] == [t.tolist() for t in hf.tokens]
    for a, b in zip(tl.logits, hf.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)


def test_fast_path_resid_pre_and_fallback_when_hooks_active(tiny):
    d = tiny.cfg.d_model
    pre = sl.SteeringVector(
        {2: torch.randn(d, generator=torch.Generator().manual_seed(5))}, hook="hook_resid_pre"
    )
    kw = dict(steering=pre, alpha=5.0, max_new_tokens=6)
    assert sl.generate(tiny, PROMPTS, engine="tl", **kw) == sl.generate(
        tiny, PROMPTS, engine="hf", **kw
    )
    from steerlens.fastpath import can_use_fast_path

    assert can_use_fast_path(tiny, pre.hook)
    other = sl.SteeringVector({1: torch.ones(d)})
    with sl.steering(tiny, other, alpha=2.0):  # a user's own hooks must keep firing
        assert not can_use_fast_path(tiny, pre.hook)
        inside = sl.generate(tiny, PROMPTS, max_new_tokens=6)
    assert inside == sl.generate(
        tiny, PROMPTS, steering=other, alpha=2.0, max_new_tokens=6, engine="tl"
    )
    with pytest.raises(ValueError, match="engine must be"):
        sl.generate(tiny, PROMPTS, engine="vllm")


def test_edited_weights_disable_the_fast_path():
    from steerlens.fastpath import can_use_fast_path, hf_twin

    model = sl.load_model("tiny-random")
    vec = sl.SteeringVector({2: torch.ones(64)})
    sl.generate(model, PROMPTS, steering=vec, max_new_tokens=4)  # builds the twin
    assert can_use_fast_path(model, vec.hook)
    with torch.no_grad():  # an ablation, as a researcher would do it
        next(p for n, p in model.named_parameters() if "blocks.1" in n or "layers.1" in n).mul_(0.0)
    assert not can_use_fast_path(model, vec.hook)
    edited = sl.generate(model, PROMPTS, steering=vec, max_new_tokens=6)  # auto -> TL path
    assert edited == sl.generate(model, PROMPTS, steering=vec, max_new_tokens=6, engine="tl")
    with pytest.raises(ValueError, match="weights changed"):
        hf_twin(model)
    fresh = sl.load_model("tiny-random")
    with torch.no_grad():
        next(iter(fresh.parameters())).add_(1.0)
    assert not can_use_fast_path(fresh, vec.hook)  # edited before any twin existed
    with pytest.raises(ValueError, match="weights changed"):
        sl.generate(fresh, PROMPTS, max_new_tokens=2, engine="hf")
