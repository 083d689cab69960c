"""lm-evaluation-harness steering files: structure, round trip, refusals, and the same
numbers as ``sl.steering`` when applied the way lm-evaluation-harness applies them."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_impl, on_device

import steerlens as sl
from steerlens.core.engines import hf as hf_engine
from steerlens.core.lm_eval_io import hookpoint


def _vec(d_model: int, hook: str = "hook_resid_post") -> sl.SteeringVector:
    g = torch.Generator().manual_seed(3)
    return sl.SteeringVector(
        {2: torch.randn(d_model, generator=g), 3: torch.randn(d_model, generator=g)},
        model_name="tiny-random",
        hook=hook,
    )


def test_the_file_has_the_structure_lm_eval_reads(tmp_path):
    vec = _vec(8)
    path = vec.to_lm_eval(tmp_path / "steer.pt", alpha=2.5)
    config = torch.load(path, weights_only=True)
    assert set(config) == {"layers.2", "layers.3"}
    for layer, name in ((2, "layers.2"), (3, "layers.3")):
        entry = config[name]
        assert entry["action"] == "add" and entry["steering_coefficient"] == 2.5
        assert entry["bias"] is None and entry["head_index"] is None
        assert torch.equal(entry["steering_vector"], vec.directions[layer])
    assert hookpoint(0, "hook_resid_pre") == "embed_tokens"
    assert hookpoint(3, "hook_resid_pre") == "layers.2"
    with pytest.raises(ValueError, match="hook_resid_mid is not one"):
        _vec(8, "hook_resid_mid").to_lm_eval(tmp_path / "mid.pt")
    with pytest.raises(ValueError, match=r"\.pt or \.pth"):
        vec.to_lm_eval(tmp_path / "steer.safetensors")


def test_round_trip_folds_the_coefficient(tmp_path):
    vec = _vec(8)
    back = sl.SteeringVector.from_lm_eval(vec.to_lm_eval(tmp_path / "s.pt", alpha=-1.5))
    assert back.layers == [2, 3] and back.hook == "hook_resid_post"
    for layer in (2, 3):
        assert torch.equal(back.directions[layer], vec.directions[layer] * -1.5)
    pre = _vec(8, "hook_resid_pre")  # resid_pre(l) is the output of block l - 1
    back = sl.SteeringVector.from_lm_eval(pre.to_lm_eval(tmp_path / "p.pt"))
    assert back.layers == [1, 2] and torch.equal(back.directions[1], pre.directions[2])


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"layers.1": {"action": "add", "steering_vector": _Evil()}}, "refused to unpickle"),
        ({"layers.1": {"action": "clamp", "steering_vector": torch.ones(4)}}, "only the 'add'"),
        ({"layers.1.mlp": {"action": "add", "steering_vector": torch.ones(4)}}, "not a decoder"),
        ({"layers.1": {"action": "add", "steering_vector": torch.ones(2, 4)}}, "1-D tensor"),
        ({"layers.1": {"steering_vector": torch.ones(4), "steering_coefficient": "x"}}, "number"),
        ({}, "non-empty dict"),
    ],
)
def test_bad_files_are_refused_with_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        sl.SteeringVector.from_lm_eval(path)


def test_lm_evals_add_hooks_give_the_steered_logits_of_sl_steering(tiny_bridge, tmp_path):
    """Apply the file as lm-evaluation-harness does (a forward hook adding coefficient x vector
    to the output of ``model.base_model.<hookpoint>``) on the plain HF model: the logits are
    those of ``sl.steering`` on the bridge."""
    vec = _vec(int(tiny_bridge.cfg.d_model))
    config = torch.load(vec.to_lm_eval(tmp_path / "s.pt", alpha=3.0), weights_only=True)
    hf = hf_engine.hf_twin(tiny_bridge)
    modules = dict(hf.base_model.named_modules())
    handles = []

    def add(entry):
        def hook(module, args, output):
            delta = entry["steering_coefficient"] * entry["steering_vector"]
            if isinstance(output, tuple):
                return (output[0] + delta, *output[1:])
            return output + delta

        return hook

    ids = on_device(tiny_bridge, torch.tensor([[5, 17, 42, 9, 100]]))
    try:
        for name, entry in config.items():
            handles.append(modules[name].register_forward_hook(add(entry)))
        with torch.inference_mode():
            got = hf(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode(), sl.steering(tiny_bridge, vec, alpha=3.0):
        want = tiny_bridge(ids)
    with torch.inference_mode():
        plain = tiny_bridge(ids)
    assert float((want - plain).abs().max()) > 1e-2  # the steering moved the logits
    assert_close_impl(got - got.mean(-1, keepdim=True), want - want.mean(-1, keepdim=True))
