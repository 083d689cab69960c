"""weight_processing: TransformerLens' full load-time processing, the light one (the
unembedding centred only), or the HF weights as they are.

For an RMSNorm model the full processing changes neither the residual stream nor the logits
beyond the centring, which is why ``"auto"`` does the light one on an accelerator (the full
one holds ~5x the weights there). Every model here is loaded by name from a saved folder
(the path a hub model takes) with random RMSNorm scales: the tiny model's own are ones,
which folding would leave as they are."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from conftest import BACKENDS, ENGINES, PROMPTS, assert_close_impl, on_device

import steerlens as sl
from steerlens.core import models
from steerlens.core.models import _resolve_processing, load_spec

MODES = ("full", "light", "none")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from steerlens.core._tiny import tiny_hf_model

    path = tmp_path_factory.mktemp("tiny-norms")
    hf, tok = tiny_hf_model(seed=0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=BACKENDS)
def trio(request, folder):
    # float32 on every device (a model loaded by name defaults to bf16 on CUDA)
    return {
        m: sl.load_model(folder, backend=request.param, weight_processing=m, dtype="float32")
        for m in MODES
    }


def _query_weight(model) -> torch.Tensor:
    return next(
        p for n, p in model.named_parameters() if ("q_proj" in n or "W_Q" in n) and ".0." in n
    )


def _run(model, ids, vec=None, alpha=0.0):
    names = [sl.resid_post(layer) for layer in range(model.cfg.n_layers)]
    block = sl.steering(model, vec, alpha=alpha) if vec else nullcontext()
    with torch.no_grad(), block:
        logits, cache = model.run_with_cache(on_device(model, ids), names_filter=names)
    return logits[0].cpu(), [cache[n][0].cpu() for n in names]


def test_auto_resolves_by_class_norm_and_device():
    assert _resolve_processing("auto", True, "RMS", on_accelerator=True) == "light"
    assert _resolve_processing("auto", True, "RMS", on_accelerator=False) == "full"
    assert _resolve_processing("auto", True, "LN", on_accelerator=True) == "full"
    assert _resolve_processing("auto", False, "RMS", on_accelerator=True) == "full"
    assert _resolve_processing("none", True, "LN", on_accelerator=False) == "none"
    assert models._on_accelerator("cuda:0", None) and not models._on_accelerator("cpu", None)
    assert models._on_accelerator(None, "auto") and not models._on_accelerator(None, {"": "cpu"})
    with pytest.raises(ValueError, match="weight_processing must be"):
        sl.load_model("tiny-random", weight_processing="some")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["tiny-random", "folder"])
def test_load_model_records_what_auto_chose_on_each_device(name, backend, folder, monkeypatch):
    name = folder if name == "folder" else name

    def chosen(**kw):
        return load_spec(sl.load_model(name, device="cpu", backend=backend, **kw)).weight_processing

    assert chosen() == "full"
    assert chosen(weight_processing="none") == "none"
    # on an accelerator (stood in for by the CPU here) "auto" is light for a bridge only
    monkeypatch.setattr(models, "_on_accelerator", lambda device, device_map: True)
    assert chosen() == ("light" if backend == "bridge" else "full")


def test_every_mode_has_the_same_residual_stream_and_log_probs(trio):
    full, light, none = (trio[m] for m in MODES)
    # the weights really differ: the norm scales are folded into the next layers ...
    assert not torch.allclose(_query_weight(full), _query_weight(none))
    assert torch.equal(_query_weight(light), _query_weight(none))  # ... but not by "light"
    ids = sl.tokens.tokenize(full, PROMPTS[:1])[0][None]
    g = torch.Generator().manual_seed(3)
    vec = sl.SteeringVector({1: torch.randn(64, generator=g), 2: torch.randn(64, generator=g)})
    for v, alpha in ((None, 0.0), (vec, 2.0)):
        lf, rf = _run(full, ids, v, alpha)
        for other in (light, none):
            lo, ro = _run(other, ids, v, alpha)
            for a, b in zip(rf, ro, strict=True):
                assert_close_impl(a, b)  # the same residual stream (other arithmetic)
            assert_close_impl(lf.log_softmax(-1), lo.log_softmax(-1))
        # "light" gives the full processing's raw logits; "none" differs from them by one
        # constant per position (the centring), which is not zero
        assert_close_impl(_run(light, ids, v, alpha)[0], lf)
        shift = _run(none, ids, v, alpha)[0] - lf
        assert_close_impl(shift, shift.mean(-1, keepdim=True).expand_as(shift))
        assert float(shift.mean(-1).abs().max()) > 1e-3


def test_light_processing_unties_a_tied_unembedding(tmp_path):
    from steerlens.core._tiny import tiny_hf_model

    hf, tok = tiny_hf_model(seed=0)
    hf.config.tie_word_embeddings = True
    hf.lm_head.weight = hf.model.embed_tokens.weight  # tie them, as SmolLM2 does
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    embed = hf.model.embed_tokens.weight.detach().clone()
    assert models._centre_unembedding(hf)
    assert torch.equal(hf.model.embed_tokens.weight, embed)  # the embedding is untouched
    assert hf.lm_head.weight is not hf.model.embed_tokens.weight
    assert_close_impl(hf.lm_head.weight, embed - embed.mean(0, keepdim=True))
    assert not hf.config.tie_word_embeddings
    # the same through load_model: a tied model loaded by name, light vs full, both engines
    light = sl.load_model(str(tmp_path), weight_processing="light", dtype="float32")
    full = sl.load_model(str(tmp_path), weight_processing="full", dtype="float32")
    out = light.original_model
    assert out.get_output_embeddings().weight is not out.get_input_embeddings().weight
    assert torch.equal(out.get_input_embeddings().weight.cpu(), embed)
    ids = sl.tokens.tokenize(light, PROMPTS[:1])[0][None]
    assert_close_impl(_run(light, ids)[0], _run(full, ids)[0])  # the same raw logits
    kw = dict(max_new_tokens=6, progress_bar=False)
    for engine in ENGINES:
        assert sl.generate(light, PROMPTS, engine=engine, **kw) == sl.generate(
            full, PROMPTS, engine=engine, **kw
        )


def test_no_centring_where_it_would_change_the_log_probs_or_cannot_be_done():
    class Cfg:
        output_logits_soft_cap = 30.0  # Gemma-2's tanh cap: not shift-invariant

    assert models._softcapped(Cfg()) and not models._softcapped(object())
    from steerlens.core._tiny import tiny_hf_model

    hf, _ = tiny_hf_model(seed=0)
    hf.lm_head.weight = torch.nn.Parameter(torch.empty_like(hf.lm_head.weight, device="meta"))
    assert not models._centre_unembedding(hf)  # offloaded (device_map): left as it is


@pytest.mark.parametrize("engine", ENGINES)
def test_generation_is_the_same_in_every_mode(folder, engine):
    """Both engines: the fast path's twin is bound to the weights as each mode left them."""
    g = torch.Generator().manual_seed(1)
    vec = sl.SteeringVector({2: torch.randn(64, generator=g), 3: torch.randn(64, generator=g)})
    kw = dict(max_new_tokens=6, steering=vec, alpha=1.5, engine=engine, progress_bar=False)
    texts = [
        sl.generate(sl.load_model(folder, weight_processing=m, dtype="float32"), PROMPTS, **kw)
        for m in MODES
    ]
    assert texts[0] == texts[1] == texts[2]
