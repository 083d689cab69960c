from __future__ import annotations

import pytest
import torch
from conftest import needs_hooked, on_device

import steerlens as sl


def test_default_layers_follow_research_depth():
    assert sl.default_layers(32) == list(range(16, 23))  # Llama-3.1-8B: the research's 16-22
    assert sl.default_layers(30) == list(range(15, 22))  # SmolLM2-135M
    assert sl.default_layers(4) == [2, 3]
    assert sl.default_layers(1) == [0]
    with pytest.raises(ValueError):
        sl.default_layers(0)


def test_tiny_model_is_seeded(tiny_bridge):
    again = sl.load_model("tiny-random")
    other = sl.load_model("tiny-random", seed=1)
    ids = on_device(tiny_bridge, sl.tokens.tokenize(tiny_bridge, ["abc"])[0][None])
    with torch.no_grad():
        torch.testing.assert_close(tiny_bridge(ids), again(ids))
        assert not torch.allclose(tiny_bridge(ids), other(ids))
    assert sl.model_name(tiny_bridge) == "tiny-random"
    assert (tiny_bridge.cfg.n_layers, tiny_bridge.cfg.d_model) == (4, 64)


@needs_hooked
def test_backends_give_the_same_logits(tiny_bridge):
    hooked = sl.load_model("tiny-random", backend="hooked")
    assert type(hooked).__name__ == "HookedTransformer"
    assert type(tiny_bridge).__name__ == "TransformerBridge"
    ids = on_device(
        tiny_bridge, sl.tokens.tokenize(tiny_bridge, ["same weights, same numbers"])[0][None]
    )
    with torch.no_grad():
        torch.testing.assert_close(tiny_bridge(ids), hooked(ids), rtol=0, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend must be"):
        sl.load_model("tiny-random", backend="jax")
    with pytest.raises(ValueError, match="not both"):
        sl.load_model("tiny-random", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="unknown dtype"):
        sl.load_model("tiny-random", dtype="float7")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny model saved as an ordinary HF folder: loaded *by name* (a path), not by the
    built-in shortcut, through the same code as a hub name."""
    from steerlens.core._tiny import tiny_hf_model

    folder = tmp_path_factory.mktemp("tiny-hf")
    hf, tok = tiny_hf_model()
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@needs_hooked
def test_a_named_model_has_one_name_and_its_vectors_move_between_backends(tiny_folder):
    bridge = sl.load_model(tiny_folder)
    hooked = sl.load_model(tiny_folder, backend="hooked")
    assert type(hooked).__name__ == "HookedTransformer"
    assert sl.model_name(bridge) == sl.model_name(hooked) == tiny_folder
    vec = sl.SteeringVector({2: torch.ones(64)}, model_name=sl.model_name(bridge))
    vec.validate(hooked)  # built on one backend, valid on the other
    a = sl.generate(bridge, ["hi"], steering=vec, alpha=2.0, max_new_tokens=5)
    b = sl.generate(hooked, ["hi"], steering=vec, alpha=2.0, max_new_tokens=5)
    assert a == b


@needs_hooked
def test_official_hooked_name_keeps_the_full_name(monkeypatch):
    """TransformerLens stores official models under a short cfg.model_name."""
    from transformer_lens import HookedTransformer

    def fake_from_pretrained(name, **kwargs):
        model = sl.load_model("tiny-random", backend="hooked")
        model.cfg.model_name = "Llama-3.1-8B-Instruct"  # what TransformerLens does
        return model

    monkeypatch.setattr(HookedTransformer, "from_pretrained", fake_from_pretrained)
    full = "meta-llama/Llama-3.1-8B-Instruct"
    model = sl.load_model(full, backend="hooked")
    assert sl.model_name(model) == full
    sl.SteeringVector({1: torch.ones(64)}, model_name=full).validate(model)


def test_hooked_conversion_refuses_what_it_cannot_convert_exactly():
    from types import SimpleNamespace

    from steerlens.core.models import _check_plain_llama

    base = dict(
        model_type="llama", hidden_size=64, num_attention_heads=4, rope_scaling=None, head_dim=16
    )
    _check_plain_llama(SimpleNamespace(**base), "ok")
    for change, match in (
        ({"model_type": "qwen2"}, "'qwen2' model"),
        ({"rope_scaling": {"rope_type": "llama3"}}, "RoPE scaling"),
        ({"attention_bias": True}, "biases"),
        ({"head_dim": 32}, "head_dim 32"),
    ):
        with pytest.raises(ValueError, match=match):
            _check_plain_llama(SimpleNamespace(**{**base, **change}), "x")
