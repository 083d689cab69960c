from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import steerlens as sl


def _vec(layers=(2, 3), d=8, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return sl.SteeringVector({lyr: torch.randn(d, generator=g) for lyr in layers}, **kw)


def test_algebra():
    a, b = _vec(seed=0), _vec(layers=(3, 4), seed=1)
    s = a + b
    assert s.layers == [2, 3, 4]
    torch.testing.assert_close(s.directions[2], a.directions[2])
    torch.testing.assert_close(s.directions[3], a.directions[3] + b.directions[3])
    torch.testing.assert_close(s.directions[4], b.directions[4])
    d = a - b
    torch.testing.assert_close(d.directions[4], -b.directions[4])
    torch.testing.assert_close((2 * a).directions[2], 2 * a.directions[2])
    torch.testing.assert_close((a * 2).directions[3], 2 * a.directions[3])
    torch.testing.assert_close((a / 4).directions[3], a.directions[3] / 4)
    torch.testing.assert_close((-a).directions[2], -a.directions[2])
    n = a.normalized()
    assert all(abs(x - 1.0) < 1e-6 for x in n.norms().values())
    assert a.to(torch.float64).dtype == torch.float64
    assert a.select([3]).layers == [3]
    assert a.as_tensor().shape == (2, 8)
    with pytest.raises(ZeroDivisionError):
        a / 0


def test_algebra_refuses_mismatches():
    with pytest.raises(ValueError, match="d_model differs"):
        _vec(d=8) + _vec(d=9)
    with pytest.raises(ValueError, match="combine vectors on"):
        _vec() + _vec(hook="hook_resid_pre")
    with pytest.raises(ValueError, match="different models"):
        _vec(model_name="a") + _vec(model_name="b")
    with pytest.raises(ValueError, match="zero direction"):
        sl.SteeringVector({1: torch.zeros(3)}).normalized()
    with pytest.raises(ValueError, match="not in this vector"):
        _vec().select([7])


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"directions": {}}, ValueError, "at least one layer"),
        ({"directions": {-1: torch.ones(3)}}, ValueError, "non-negative ints"),
        ({"directions": {1: torch.ones(2, 3)}}, ValueError, "1-D"),
        ({"directions": {1: torch.ones(3), 2: torch.ones(4)}}, ValueError, "differs"),
        ({"directions": {1: torch.ones(3, dtype=torch.long)}}, TypeError, "floating point"),
        ({"directions": {1: torch.ones(3)}, "hook": "attn"}, ValueError, "hook must be"),
        (
            {"directions": {1: torch.ones(3)}, "metadata": {"x": object()}},
            TypeError,
            "serializable",
        ),
    ],
)
def test_construction_validation(kwargs, err, match):
    with pytest.raises(err, match=match):
        sl.SteeringVector(**kwargs)


def test_validate_against_model(tiny_bridge):
    good = _vec(d=64, model_name="tiny-random")
    good.validate(tiny_bridge)
    nan = sl.SteeringVector({1: torch.tensor([float("nan")] * 64)})
    with pytest.raises(ValueError, match="NaN or inf"):
        nan.validate(tiny_bridge)


def test_safetensors_round_trip(tmp_path):
    v = _vec(model_name="tiny-random", method="caa", metadata={"pairs": 12, "users": ["u1"]})
    path = v.save(tmp_path / "sub" / "v.safetensors")
    w = sl.SteeringVector.load(path)
    assert (w.layers, w.model_name, w.hook, w.method, w.metadata) == (
        v.layers,
        "tiny-random",
        "hook_resid_post",
        "caa",
        {"pairs": 12, "users": ["u1"]},
    )
    for layer in v.layers:
        torch.testing.assert_close(w.directions[layer], v.directions[layer], rtol=0, atol=0)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no steering vector file"):
        sl.SteeringVector.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a steerlens vector file"):
        sl.SteeringVector.load(tmp_path / "plain.safetensors")


def test_gguf_round_trip_and_layer_convention(tmp_path):
    import gguf

    v = _vec(layers=(5, 6), d=16, model_name="smollm2-135m-instruct")
    path = v.to_gguf(tmp_path / "v.gguf")
    # Read back the way llama.cpp and repeng do: by field and tensor name.
    reader = gguf.GGUFReader(str(path))
    arch = bytes(reader.get_field("general.architecture").parts[-1]).decode()
    hint = bytes(reader.get_field("controlvector.model_hint").parts[-1]).decode()
    count = int(reader.get_field("controlvector.layer_count").parts[-1][0])
    names = sorted(t.name for t in reader.tensors)
    assert (arch, hint, count, names) == (
        "controlvector",
        "smollm2-135m-instruct",
        2,
        ["direction.5", "direction.6"],
    )
    tensor5 = next(t for t in reader.tensors if t.name == "direction.5")
    np.testing.assert_allclose(np.asarray(tensor5.data).reshape(-1), v.directions[5].numpy())
    w = sl.SteeringVector.from_gguf(path)
    assert w.layers == [5, 6] and w.metadata["model_hint"] == "smollm2-135m-instruct"
    torch.testing.assert_close(w.directions[6], v.directions[6])


def test_gguf_export_refuses_layer_zero_and_other_hooks(tmp_path):
    with pytest.raises(ValueError, match="cannot steer layer 0"):
        _vec(layers=(0, 1)).to_gguf(tmp_path / "z.gguf")
    with pytest.raises(ValueError, match="block outputs"):
        _vec(hook="hook_resid_pre").to_gguf(tmp_path / "p.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match=r"bad\.gguf: not a readable GGUF file"):
        sl.SteeringVector.from_gguf(tmp_path / "bad.gguf")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        sl.SteeringVector.from_gguf(tmp_path / "missing.gguf")


def test_metadata_is_json(tmp_path):
    v = _vec(metadata={"a": [1, 2]})
    path = v.save(tmp_path / "v.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["steerlens"])
    assert meta["layers"] == [2, 3] and meta["format"] == "steerlens.vector/1"
