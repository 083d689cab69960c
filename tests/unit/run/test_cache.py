from __future__ import annotations

import pytest
import torch
from conftest import ENGINES, PROMPTS, assert_close_impl, on_device

import steerlens as sl


@pytest.mark.parametrize("engine", ENGINES)
def test_padded_equals_unbatched_and_matches_run_with_cache(tiny, engine):
    layers = [0, 2]
    kw = dict(pool="none", chat=False, engine=engine, progress_bar=False)
    batched = sl.cache_activations(tiny, PROMPTS, layers, batch_size=3, **kw)
    for text, acts in zip(PROMPTS, batched, strict=True):
        ids = sl.tokens.tokenize(tiny, [text])[0]
        single = sl.cache_activations(tiny, [ids], layers, **kw)[0]
        assert_close_impl(acts, single)  # batched vs single: last bits differ by CPU
        _, cache = tiny.run_with_cache(on_device(tiny, ids[None]))
        for i, lyr in enumerate(layers):
            assert_close_impl(acts[i], cache[sl.resid_post(lyr)][0])


def test_cache_formats_texts_as_generate_does(tiny):
    """The default is the chat template when the model has one, as in generate."""
    default = sl.cache_activations(tiny, PROMPTS[:2], [1], pool="none", progress_bar=False)
    ids = sl.encode_prompts(tiny, PROMPTS[:2])  # generate's own tokenisation
    explicit = sl.cache_activations(tiny, ids, [1], pool="none", progress_bar=False)
    for a, b in zip(default, explicit, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same ids, the same arithmetic
    raw = sl.cache_activations(tiny, PROMPTS[:2], [1], pool="none", chat=False, progress_bar=False)
    assert raw[0].shape[1] < default[0].shape[1]


def test_mean_pooling_excludes_special_and_template_tokens(tiny):
    text = "hello there"
    (ids,) = sl.encode_prompts(tiny, [text])
    (mask,) = sl.tokens.content_masks(tiny, [text], [ids], chat=True)
    kept = tiny.tokenizer.decode(ids[mask])
    assert kept == text  # only the message's own tokens: no <|im_start|>, "user", "\n", ...
    every = sl.cache_activations(tiny, [text], [1], pool="none", progress_bar=False)[0]
    mean = sl.cache_activations(tiny, [text], [1], pool="mean", progress_bar=False)
    # pooled where the model runs (GPU too) vs a CPU mean here: the same tokens, last bits
    assert_close_impl(mean[0], every[:, mask].mean(1), rel=1e-5)
    with_template = sl.cache_activations(
        tiny, [text], [1], pool="mean", exclude_template=False, progress_bar=False
    )
    assert_close_impl(with_template[0], every.mean(1), rel=1e-5)
    raw_ids = sl.tokens.tokenize(tiny, [text])  # raw text: only the BOS is dropped
    raw_mean = sl.cache_activations(tiny, raw_ids, [1], pool="mean", progress_bar=False)
    raw_every = sl.cache_activations(tiny, raw_ids, [1], pool="none", progress_bar=False)[0]
    assert int(raw_ids[0][0]) == tiny.tokenizer.bos_token_id
    assert_close_impl(raw_mean[0], raw_every[:, 1:].mean(1), rel=1e-5)


def test_pooling_and_masks(tiny):
    full = sl.cache_activations(tiny, PROMPTS, [1], pool="none", progress_bar=False)
    # with no masks, "mean" averages the content tokens (see the test above), "last" the last
    masks0 = sl.tokens.content_masks(tiny, PROMPTS, sl.encode_prompts(tiny, PROMPTS), chat=True)
    last = sl.cache_activations(tiny, PROMPTS, [1], pool="last", progress_bar=False)
    mean = sl.cache_activations(tiny, PROMPTS, [1], pool="mean", progress_bar=False)
    assert last.shape == mean.shape == (3, 1, 64)
    for i in range(3):
        torch.testing.assert_close(last[i], full[i][:, -1])
        torch.testing.assert_close(mean[i], full[i][:, masks0[i]].mean(1))
    ids, masks = sl.response_masks(tiny, ["question?"] * 2, ["short", "a longer answer"])
    assert [int(m.sum()) for m in masks] == [5, 15]  # byte-level tokenizer: one token a byte
    resp_mean = sl.cache_activations(tiny, ids, [1], pool="mean", masks=masks, progress_bar=False)
    every = sl.cache_activations(tiny, ids, [1], pool="none", progress_bar=False)
    for i in range(2):
        torch.testing.assert_close(resp_mean[i], every[i][:, masks[i]].mean(1))
    sel = sl.cache_activations(tiny, ids, [1], pool="none", masks=masks, progress_bar=False)
    assert [s.shape[1] for s in sel] == [5, 15]


def test_default_layers_and_hooks(tiny):
    acts = sl.cache_activations(tiny, PROMPTS[:1], progress_bar=False)
    assert acts.shape == (1, len(sl.default_layers(tiny)), 64)
    pre = sl.cache_activations(
        tiny, PROMPTS[:1], [1], hook="hook_resid_pre", pool="none", engine="tl", progress_bar=False
    )
    post0 = sl.cache_activations(
        tiny, PROMPTS[:1], [0], pool="none", engine="tl", progress_bar=False
    )
    torch.testing.assert_close(pre[0], post0[0], rtol=0, atol=0)  # pre(l) is post(l-1)


def test_store_round_trip(tiny, tmp_path):
    mem = sl.cache_activations(tiny, PROMPTS, [1, 3], pool="mean", batch_size=2, progress_bar=False)
    store = sl.cache_activations(
        tiny, PROMPTS, [1, 3], pool="mean", batch_size=2, store=tmp_path / "s", progress_bar=False
    )
    assert isinstance(store, sl.ActivationStore)
    assert len(store.shards) == 2 and len(store) == 3
    reopened = sl.ActivationStore.open(tmp_path / "s")
    assert_close_impl(reopened.load(), mem)  # other batch mates: last bits
    assert_close_impl(reopened[2], mem[2])
    rows = torch.cat(list(reopened.iter_batches(2, layer=3)))
    assert_close_impl(rows, mem[:, 1])
    with pytest.raises(FileExistsError):
        sl.cache_activations(tiny, PROMPTS, [1], store=tmp_path / "s", progress_bar=False)
    none_store = sl.cache_activations(
        tiny, PROMPTS, [1], pool="none", store=tmp_path / "n", progress_bar=False
    )
    full = sl.cache_activations(tiny, PROMPTS, [1], pool="none", progress_bar=False)
    for a, b in zip(none_store.load(), full, strict=True):
        assert_close_impl(a, b)
    assert sum(b.shape[0] for b in none_store.iter_batches(7, layer=1)) == sum(
        f.shape[1] for f in full
    )


def test_cache_errors(tiny):
    with pytest.raises(ValueError, match="out of range"):
        sl.cache_activations(tiny, PROMPTS, [4], progress_bar=False)
    with pytest.raises(ValueError, match="pool must be"):
        sl.cache_activations(tiny, PROMPTS, [1], pool="max", progress_bar=False)
    with pytest.raises(ValueError, match="no inputs"):
        sl.cache_activations(tiny, [], [1], progress_bar=False)
    with pytest.raises(TypeError, match="not one string"):
        sl.cache_activations(tiny, "text", [1], progress_bar=False)
    ids = sl.tokens.tokenize(tiny, ["abc"])
    with pytest.raises(ValueError, match="selects no token"):
        sl.cache_activations(
            tiny, ids, [1], masks=[torch.zeros(4, dtype=torch.bool)], progress_bar=False
        )
    with pytest.raises(ValueError, match="mask has shape"):
        sl.cache_activations(
            tiny, ids, [1], masks=[torch.ones(2, dtype=torch.bool)], progress_bar=False
        )


@pytest.mark.parametrize("hook", ["hook_resid_post", "hook_resid_pre"])
def test_fast_path_cache_equals_transformerlens_hooks(tiny, hook):
    kw = dict(hook=hook, pool="none", batch_size=2, progress_bar=False)
    tl = sl.cache_activations(tiny, PROMPTS, [0, 2], engine="tl", **kw)
    hf = sl.cache_activations(tiny, PROMPTS, [0, 2], engine="hf", **kw)
    for a, b in zip(tl, hf, strict=True):  # two implementations: float32 rounding only
        assert_close_impl(b, a)


@pytest.mark.parametrize("engine", ENGINES)
def test_cache_inside_a_per_row_steering_block(tiny, engine):
    """Per-row α of an open steering() block follows each input through sorting, and the
    fast path carries the block (it used to skip it)."""
    vec = sl.SteeringVector({1: torch.ones(64)})
    kw = dict(pool="none", chat=False, batch_size=2, engine=engine, progress_bar=False)
    base = sl.cache_activations(tiny, PROMPTS, [1], **kw)
    alphas = [1.0, 2.0, 3.0]
    with sl.steering(tiny, vec, alpha=alphas):
        steered = sl.cache_activations(tiny, PROMPTS, [1], **kw)
    for a, s0, b in zip(alphas, steered, base, strict=True):
        assert_close_impl(s0, b + a)


def test_cache_under_steering_sees_the_steered_residual(tiny):
    vec = sl.SteeringVector({1: torch.ones(64)})
    base = sl.cache_activations(tiny, PROMPTS[:1], [1], progress_bar=False)
    with sl.steering(tiny, vec, alpha=2.0):
        steered = sl.cache_activations(tiny, PROMPTS[:1], [1], progress_bar=False)
    assert_close_impl(steered, base + 2.0)
    mid = sl.cache_activations(tiny, PROMPTS[:1], [1], hook="hook_resid_mid", progress_bar=False)
    assert mid.shape == (1, 1, 64)  # resid_mid has no HF twin point: TL path
    with pytest.raises(ValueError, match="engine must be"):
        sl.cache_activations(tiny, PROMPTS, [1], engine="jax", progress_bar=False)


def test_bad_engine_writes_nothing(tiny, tmp_path):
    with pytest.raises(ValueError, match="engine must be"):
        sl.cache_activations(
            tiny, PROMPTS, [1], engine="jax", store=tmp_path / "s", progress_bar=False
        )
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="engine='hf' works on"):
        sl.cache_activations(
            tiny, PROMPTS, [1], hook="hook_resid_mid", engine="hf", progress_bar=False
        )


def test_a_model_without_a_chat_template_defaults_to_raw_text():
    model = sl.load_model("tiny-random")
    model.tokenizer.chat_template = None
    assert sl.generate(model, PROMPTS[:1], max_new_tokens=3) == sl.generate(
        model, PROMPTS[:1], max_new_tokens=3, chat=False
    )
    a = sl.cache_activations(model, PROMPTS[:1], [1], progress_bar=False)
    b = sl.cache_activations(model, PROMPTS[:1], [1], chat=False, progress_bar=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no chat template"):
        sl.generate(model, PROMPTS[:1], max_new_tokens=3, chat=True)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_batch_is_a_new_sequence_for_the_gates(tiny, engine):
    """A one-token-wide batch after an earlier call is a prompt, not a decoding step."""
    vec = sl.SteeringVector({1: torch.ones(64)})
    one = [torch.tensor([5]), torch.tensor([9])]
    kw = dict(pool="none", batch_size=1, engine=engine, progress_bar=False)
    base = sl.cache_activations(tiny, one, [1], **kw)
    with sl.steering(tiny, vec, alpha=2.0, gate="prefill"):
        first = sl.cache_activations(tiny, one, [1], **kw)
        again = sl.cache_activations(tiny, one, [1], **kw)
    for b, f, a in zip(base, first, again, strict=True):
        assert_close_impl(f, b + 2.0)
        assert_close_impl(a, b + 2.0)


@pytest.mark.parametrize("engine", ENGINES)
def test_cache_runs_the_engine_it_names(tiny, engine, monkeypatch):
    from steerlens.core.engines import HFEngine, TLEngine

    seen = []
    for cls in (HFEngine, TLEngine):
        real = cls.capture
        monkeypatch.setattr(
            cls, "capture", lambda *a, _r=real, _n=cls.name, **k: seen.append(_n) or _r(*a, **k)
        )
    sl.cache_activations(tiny, PROMPTS, [1], batch_size=2, engine=engine, progress_bar=False)
    assert seen == [engine, engine]
    seen.clear()
    sl.cache_activations(tiny, PROMPTS, [1], batch_size=3, progress_bar=False)  # auto
    assert seen == (["hf"] if hasattr(tiny, "original_model") else ["tl"])


@pytest.mark.parametrize("engine", ENGINES)
def test_identical_inputs_run_once_unless_a_per_row_hook_is_open(
    tiny, rand_vec, engine, monkeypatch
):
    import steerlens.run.cache as cache_mod

    texts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0]]
    ran = []
    real = cache_mod.forward_batches
    monkeypatch.setattr(
        cache_mod,
        "forward_batches",
        lambda m, ids, *a, **k: ran.append(len(ids)) or real(m, ids, *a, **k),
    )
    acts = sl.cache_activations(tiny, texts, [1, 2], pool="mean", engine=engine, progress_bar=False)
    assert ran == [2]
    assert torch.equal(acts[0], acts[2]) and torch.equal(acts[0], acts[3])
    single = sl.cache_activations(
        tiny, texts[:2], [1, 2], pool="mean", engine=engine, progress_bar=False
    )
    assert_close_impl(acts[:2], single)
    # per-row α: the three copies are three different inputs
    with sl.steering(tiny, rand_vec, alpha=[0.0, 0.0, 3.0, -3.0]):
        steered = sl.cache_activations(
            tiny, texts, [2, 3], pool="mean", engine=engine, progress_bar=False
        )
    assert ran[-1] == 4
    assert not torch.allclose(steered[0], steered[2]) and not torch.allclose(steered[2], steered[3])
    none = sl.cache_activations(tiny, texts, [1], pool="none", engine=engine, progress_bar=False)
    assert none[0] is not none[2] and torch.equal(none[0], none[2])  # copies, never aliases


def _prompt_rows(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Three responses after one 24-token prompt, two after another of 20, one alone; masks
    on the responses, one of them also on a prompt token (its prefix must stop before it)."""
    g = torch.Generator().manual_seed(seed)

    def toks(n: int) -> torch.Tensor:
        return torch.randint(5, 250, (n,), generator=g)

    a, b = toks(24), toks(20)
    parts = [(a, 4), (a, 7), (a, 2), (b, 5), (b, 3), (toks(9), 4)]
    ids = [torch.cat([p, toks(n)]) for p, n in parts]
    masks = [torch.arange(len(x)) >= len(p) for x, (p, _) in zip(ids, parts, strict=True)]
    masks[1][10] = True  # row 1 pools a prompt token too
    return ids, masks


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("pool", "hook"),
    [("mean", "hook_resid_post"), ("last", "hook_resid_post"), ("mean", "hook_resid_pre")],
)
def test_responses_after_one_prompt_share_its_pass(tiny, engine, pool, hook, monkeypatch):
    from steerlens.core.engines import hf

    ids, masks = _prompt_rows()
    calls: list[int] = []
    real = hf.HFEngine.capture_after

    def spy(self, prefix_ids, prefix_mask, owner, *args):
        calls.append(len(owner))
        return real(self, prefix_ids, prefix_mask, owner, *args)

    monkeypatch.setattr(hf.HFEngine, "capture_after", spy)
    kw = dict(pool=pool, masks=masks, engine=engine, hook=hook, progress_bar=False)
    got = sl.cache_activations(tiny, ids, [1, 3], batch_size=4, **kw)
    if engine == "hf":  # the fast path runs each prompt once; the TL path runs whole rows
        # "mean": row 1 pools a prompt token, so a's group is rows 0 and 2 (prefix 24 tokens)
        assert sum(calls) == (4 if pool == "mean" else 5)
    else:
        assert calls == []
    monkeypatch.setattr(hf.HFEngine, "can_share_prefix", lambda self: False)
    whole = sl.cache_activations(tiny, ids, [1, 3], batch_size=4, **kw)
    assert got.shape == whole.shape == (6, 2, tiny.cfg.d_model)
    assert_close_impl(got, whole)
    for i, (x, m) in enumerate(zip(ids, masks, strict=True)):  # and one row at a time
        single = sl.cache_activations(
            tiny, [x], [1, 3], pool=pool, masks=[m], engine=engine, hook=hook
        )
        assert_close_impl(got[i], single[0])
