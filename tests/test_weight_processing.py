"""weight_processing: TransformerLens' load-time processing, or the HF weights as they are.

For an RMSNorm model the processing changes neither the residual stream nor the log-probs,
which is why ``"auto"`` may skip it on an accelerator (it holds ~5x the weights there)."""

from __future__ import annotations

import pytest
import torch
from conftest import ENGINES, PROMPTS, assert_close_impl, on_device

import steerlens as sl
from steerlens.models import _resolve_processing, load_spec


def _models(backend: str) -> dict[str, sl.HookedModel]:
    """The tiny model with random RMSNorm scales (its own are ones, which folding would leave
    as they are), built with and without the processing."""
    from steerlens._tiny import tiny_hf_model
    from steerlens.models import _bridge_from_hf, _hooked_from_llama

    out = {}
    for mode in ("full", "none"):
        hf, tok = tiny_hf_model(seed=0)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if p.ndim == 1 and "norm" in name:
                    p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        out[mode] = (
            _bridge_from_hf(hf, tok, "tiny-random", dev, mode)
            if backend == "bridge"
            else _hooked_from_llama(hf, tok, "tiny-random", dev, mode)
        )
    return out


@pytest.fixture(scope="module", params=["bridge", "hooked"])
def pair(request):
    return _models(request.param)


def _query_weight(model) -> torch.Tensor:
    return next(
        p for n, p in model.named_parameters() if ("q_proj" in n or "W_Q" in n) and ".0." in n
    )


def _run(model, ids, vec=None, alpha=0.0):
    names = [sl.resid_post(layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad(), sl.steering(model, vec, alpha=alpha) if vec else _null():
        logits, cache = model.run_with_cache(on_device(model, ids), names_filter=names)
    return logits[0].cpu(), [cache[n][0].cpu() for n in names]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_auto_resolves_by_class_norm_and_device():
    assert _resolve_processing("auto", True, "RMS", on_accelerator=True) == "none"
    assert _resolve_processing("auto", True, "RMS", on_accelerator=False) == "full"
    assert _resolve_processing("auto", True, "LN", on_accelerator=True) == "full"
    assert _resolve_processing("auto", False, "RMS", on_accelerator=True) == "full"
    assert _resolve_processing("none", True, "LN", on_accelerator=False) == "none"
    with pytest.raises(ValueError, match="weight_processing must be"):
        sl.load_model("tiny-random", weight_processing="some")  # type: ignore[arg-type]


def test_load_spec_records_what_auto_chose():
    assert load_spec(sl.load_model("tiny-random", device="cpu")).weight_processing == "full"
    none = sl.load_model("tiny-random", device="cpu", weight_processing="none")
    assert load_spec(none).weight_processing == "none"


def test_unprocessed_rmsnorm_model_has_the_same_residual_stream_and_log_probs(pair):
    full, none = pair["full"], pair["none"]
    # the weights really differ: the norm scales are folded into the next layers
    assert not torch.allclose(_query_weight(full), _query_weight(none))
    ids = sl.tokenize(full, PROMPTS[:1])[0][None]
    g = torch.Generator().manual_seed(3)
    vec = sl.SteeringVector({1: torch.randn(64, generator=g), 2: torch.randn(64, generator=g)})
    for v, alpha in ((None, 0.0), (vec, 2.0)):
        lf, rf = _run(full, ids, v, alpha)
        ln, rn = _run(none, ids, v, alpha)
        for a, b in zip(rf, rn, strict=True):
            assert_close_impl(a, b)  # the same residual stream (other arithmetic: last bits)
        assert_close_impl(lf.log_softmax(-1), ln.log_softmax(-1))
        # the raw logits differ by one constant per position (the centred unembedding)
        shift = ln - lf
        assert_close_impl(shift, shift.mean(-1, keepdim=True).expand_as(shift))


@pytest.mark.parametrize("engine", ENGINES)
def test_generation_on_an_unprocessed_bridge_matches_the_processed_one(engine, rand_vec):
    """Both engines: the fast path's twin is bound to the unprocessed weights as they are."""
    pair = _models("bridge")
    kw = dict(max_new_tokens=6, steering=rand_vec, alpha=1.5, engine=engine, progress_bar=False)
    a = sl.generate(pair["full"], PROMPTS, **kw)
    b = sl.generate(pair["none"], PROMPTS, **kw)
    assert a == b
