"""The cached-decoding guard (``steerlens.core.decoding``): every path a model can decode on is
checked, a broken path is refused with the installed versions named, and ``auto`` routes
around a refused fast path. The chat-template check of the embedded model lives here too."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from conftest import BACKENDS, PROMPTS, needs_hooked, on_device
from transformers import DynamicCache

import steerlens as sl
from steerlens.core import decoding, models
from steerlens.core._embedded import ChatTemplateChanged, check_chat_template
from steerlens.core._tiny import tiny_tokenizer
from steerlens.core.decoding import DecodingError, HookPointError
from steerlens.core.engines import TLEngine, resolve_engine
from steerlens.core.engines import hf as hf_engine
from steerlens.run import generation


class ForgetfulCache(DynamicCache):
    """A cache that hands back the new keys and values but keeps nothing."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return key_states, value_states


def _ignore_cache(bridge) -> int:
    """What transformers 5.24 did to TransformerLens 3.9's attention bridges: the cache never
    reaches them, so each decoding step attends to itself alone."""
    n = 0
    for mod in bridge.modules():
        if hasattr(type(mod), "_update_kv_cache"):
            mod._update_kv_cache = lambda k, v, **kwargs: (k, v)
            n += 1
    return n


def _tokens(model, prompts, **kw):
    out = sl.generate(
        model, prompts, max_new_tokens=6, return_tokens=True, progress_bar=False, **kw
    )
    return [t.tolist() for t in out.tokens]


@pytest.fixture
def spy_path(monkeypatch):
    seen: list[str] = []
    real = generation._run_batch

    def spy(eng, input_ids, attention_mask, opts):
        seen.append(eng.name)
        return real(eng, input_ids, attention_mask, opts)

    monkeypatch.setattr(generation, "_run_batch", spy)
    return seen


@pytest.mark.parametrize("padded", [False, True])
def test_a_cached_step_on_the_bridge_reproduces_the_full_forward(tiny_bridge, padded):
    """The issue's measurement: prefill [5, 6, 7] through the bridge's HF model with a
    DynamicCache, one step with [8], against a full forward of [5, 6, 7, 8] (14.3 apart on
    transformers 5.24 before the cache was adapted)."""
    hf = tiny_bridge.original_model
    pad = [0, 0] if padded else []
    ids = on_device(tiny_bridge, torch.tensor([[*pad, 5, 6, 7]]))
    mask = torch.ones_like(ids)
    mask[0, : len(pad)] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    with torch.inference_mode():
        hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache)
        assert cache.get_seq_length() == ids.shape[1]
        step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step = hf(
            input_ids=on_device(tiny_bridge, torch.tensor([[8]])),
            attention_mask=step_mask,
            position_ids=pos[:, -1:] + 1,
            past_key_values=cache,
        ).logits[0, -1]
        full = hf(input_ids=on_device(tiny_bridge, torch.tensor([[5, 6, 7, 8]]))).logits[0, -1]
    scale = float(full.abs().max())
    assert float((step - full).abs().max()) < 1e-3 * scale


def test_every_path_passes_the_check(tiny):
    assert decoding.check_tl_path(tiny) is None
    assert decoding.tl_refusal(tiny) is None
    twin = hf_engine.hf_twin(tiny)  # bound on a bridge, a copy on a HookedTransformer
    assert decoding.check_hf_model(twin) is None


def test_the_check_sees_an_ignored_cache():
    """The guard is not vacuous: the bug it guards against makes it fail."""
    broken = sl.load_model("tiny-random", backend="bridge")
    assert _ignore_cache(broken) > 0
    why = decoding.check_tl_path(broken)
    assert why is not None and "TransformerBridge hooks" in why
    assert re.search(r"relative logit error [0-9.e+-]+, allowed 0\.001", why)


def test_a_user_tl_hook_gives_the_fast_path_tokens(tiny_bridge, spy_path):
    """A researcher's own hook keeps ``auto`` on the TL path: it decodes as the fast path does."""
    calls = []

    def reader(tensor, *, hook):
        calls.append(hook.name)

    with tiny_bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", reader)]):
        own = _tokens(tiny_bridge, PROMPTS, batch_size=3)
    fast = _tokens(tiny_bridge, PROMPTS, batch_size=3, engine="hf")
    assert own == fast
    assert calls and spy_path == ["tl", "hf"]


def test_a_refused_tl_path_on_a_bridge(tiny_bridge, monkeypatch, caplog, spy_path):
    monkeypatch.setattr(models, "adapt_bridge_cache", _ignore_cache)
    with caplog.at_level(logging.WARNING, logger="steerlens.core.models"):
        model = sl.load_model("tiny-random", backend="bridge")
    why = decoding.tl_refusal(model)
    assert why is not None and "TransformerBridge hooks" in why
    import transformers

    assert f"transformers {transformers.__version__}" in why and "torch " in why
    assert "transformer-lens " in why and why in caplog.text
    with pytest.raises(DecodingError, match="engine='tl' was asked for"):
        sl.generate(model, PROMPTS[:1], max_new_tokens=2, engine="tl", progress_bar=False)
    # A user's own hook needs the TL path: auto refuses rather than decode wrongly.
    with (
        model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, *, hook: None)]),
        pytest.raises(DecodingError, match="TransformerLens hook"),
    ):
        sl.generate(model, PROMPTS[:1], max_new_tokens=2, progress_bar=False)
    assert spy_path == []
    # Without one, auto decodes on the (checked) fast path, as on a sound model.
    got = _tokens(model, PROMPTS, batch_size=3)
    assert spy_path == ["hf"]
    assert got == _tokens(tiny_bridge, PROMPTS, batch_size=3, engine="tl")  # a sound bridge
    # Full forwards (scoring, caching) are unaffected by a cache problem.
    acts = sl.cache_activations(model, PROMPTS, layers=[1], engine="tl", progress_bar=False)
    assert acts.shape[:2] == (len(PROMPTS), 1)


def test_a_refused_fast_path_is_routed_around(monkeypatch, caplog, spy_path):
    model = sl.load_model("tiny-random", backend="bridge")  # its TL path passed at load
    with monkeypatch.context() as patch:
        patch.setattr(decoding, "_new_cache", ForgetfulCache)
        with caplog.at_level(logging.WARNING, logger="steerlens.core.engines.resolve"):
            eng = resolve_engine(model, "hook_resid_post", "auto", decoding=True)
            assert isinstance(eng, TLEngine)
    assert "takes the TransformerLens path" in caplog.text and "fast path (plain HF" in caplog.text
    got = _tokens(model, PROMPTS, batch_size=3)
    assert spy_path == ["tl"]
    assert got == _tokens(model, PROMPTS, batch_size=3, engine="tl")
    with pytest.raises(DecodingError, match=r"fast path \(plain HF model\).*transformers "):
        sl.generate(model, PROMPTS[:1], max_new_tokens=2, engine="hf", progress_bar=False)


@needs_hooked
def test_a_hooked_transformer_whose_cache_forgets_is_refused_at_load(monkeypatch):
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    def forget(self, new_keys, new_values):
        return new_keys, new_values

    monkeypatch.setattr(TransformerLensKeyValueCacheEntry, "append", forget)
    with pytest.raises(DecodingError, match=r"HookedTransformer KV cache.*transformer-lens "):
        sl.load_model("tiny-random", backend="hooked")


@pytest.mark.parametrize("backend", BACKENDS)
def test_renamed_or_moved_hook_points_are_refused(backend, monkeypatch):
    model = sl.load_model("tiny-random", backend=backend)
    monkeypatch.setattr(decoding, "resid_pre", lambda layer: f"blocks.{layer}.hook_resid_prev")
    with pytest.raises(HookPointError, match=r"missing \(blocks\.0\.hook_resid_prev"):
        decoding.check_tl_path(model)
    # A name that exists but reads another point (the middle of the block, not its input)
    monkeypatch.setattr(decoding, "resid_pre", lambda layer: f"blocks.{layer}.hook_resid_mid")
    with pytest.raises(HookPointError, match="no longer read the residual stream"):
        decoding.check_tl_path(model)
    # ... and load_model refuses such a model on either class
    with pytest.raises(HookPointError, match="transformer-lens "):
        sl.load_model("tiny-random", backend=backend)


def test_without_the_adaptation_the_installed_transformers_decides(monkeypatch):
    """The real regression, not a simulation: with the cache adaptation switched off, a
    transformers that hands attention the cache as ``cache=`` (5.24 on) breaks the bridge's TL
    path, and the guard refuses it; an older one passes."""
    monkeypatch.setattr(models, "adapt_bridge_cache", lambda bridge: 0)
    model = sl.load_model("tiny-random", backend="bridge")
    renamed = decoding._cache_kwarg(type(model.original_model)) == "cache"
    why = decoding.tl_refusal(model)
    assert (why is not None) == renamed, why
    if renamed:
        assert "TransformerBridge hooks" in why


def test_the_adapter_passes_the_cache_under_the_old_name():
    seen = {}

    def update(self, key, value, **kwargs):
        seen.update(kwargs)
        return key, value

    wrapped = decoding._reads_cache_kwarg(update)
    cache = object()
    wrapped(None, 1, 2, cache=cache, position_ids=3)
    assert seen["past_key_values"] is cache and seen["position_ids"] == 3
    seen.clear()
    old = object()
    wrapped(None, 1, 2, past_key_values=old)  # an older transformers: passed on untouched
    assert seen == {"past_key_values": old}


def test_the_cache_kwarg_follows_the_installed_transformers():
    class Old:
        def forward(self, input_ids=None, past_key_values=None): ...

    class New:
        def forward(self, input_ids=None, cache=None): ...

    assert decoding._cache_kwarg(Old) == "past_key_values"
    assert decoding._cache_kwarg(New) == "cache"


def test_a_changed_chat_template_is_refused():
    with pytest.raises(ChatTemplateChanged, match="renders a fixed conversation differently"):
        check_chat_template(tiny_tokenizer())
