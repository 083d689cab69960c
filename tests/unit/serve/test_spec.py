"""A request's steering keys are checked before it reaches the model: each bad value is a
``SpecError`` naming its field and the status the server answers; the vector store reads
only safetensors inside its folder, checks every vector against the served model and keeps
a bounded number loaded."""

from __future__ import annotations

import math
import os

import pytest
import torch

from steerlens.core.conditions import Condition
from steerlens.core.vectors import SteeringVector
from steerlens.serve.spec import SpecError, SteerSpec, request_args
from steerlens.serve.store import ServedModel, VectorStore

MODEL = ServedModel("tiny-random", d_model=8, n_layers=2)


def test_request_args_round_trip_through_what_the_server_reads():
    body = request_args("user007", alpha=2.5, gate="first:3", condition="none")
    assert body["user"] == "user007"
    spec = SteerSpec.from_request(body["vllm_xargs"])
    assert spec == SteerSpec("user007", 2.5, "first:3", "none") and spec.steered
    # the OpenAI user field names the vector when no key does; α as text (vllm_xargs)
    spec = SteerSpec.from_request({"steer_alpha": "0.5"}, user_field="user003")
    assert (spec.user, spec.alpha, spec.gate, spec.condition) == ("user003", 0.5, "all", "own")
    assert not SteerSpec.from_request({}).steered and not SteerSpec("u", 0.0).steered


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"steer_user": "../etc/passwd"}, "steer_user"),
        ({"steer_user": "a/b"}, "steer_user"),
        ({"steer_user": "..hidden"}, "steer_user"),
        ({"steer_user": ".env"}, "steer_user"),
        ({"steer_user": 3}, "steer_user"),
        ({"steer_user": "u", "steer_alpha": math.nan}, "steer_alpha"),
        ({"steer_user": "u", "steer_alpha": math.inf}, "steer_alpha"),
        ({"steer_user": "u", "steer_alpha": "lots"}, "steer_alpha"),
        ({"steer_user": "u", "steer_alpha": True}, "steer_alpha"),
        ({"steer_user": "u", "steer_gate": "first:x"}, "steer_gate"),
        ({"steer_user": "u", "steer_gate": "sometimes"}, "steer_gate"),
        ({"steer_user": "u", "steer_condition": "../c"}, "steer_condition"),
        ({"steer_user": "u", "steer_alfa": 1.0}, "steer_alfa"),
    ],
)
def test_bad_keys_are_400_naming_their_field(args, field):
    with pytest.raises(SpecError) as err:
        SteerSpec.from_request(args)
    assert err.value.status == 400 and err.value.field == field and field in str(err.value)


def test_alpha_above_the_servers_bound_is_refused():
    assert SteerSpec("u", -4.0).checked(4.0).alpha == -4.0
    with pytest.raises(SpecError, match="above the server's bound 4") as err:
        SteerSpec("u", 4.5).checked(4.0)
    assert err.value.field == "steer_alpha"


def _vector(model_name="tiny-random", d=8, layers=(1,), condition=None):
    g = torch.Generator().manual_seed(0)
    return SteeringVector(
        {layer: torch.randn(d, generator=g) for layer in layers},
        model_name=model_name,
        condition=condition,
    )


def test_the_store_loads_checks_and_bounds_what_it_keeps(tmp_path):
    folder = tmp_path / "vectors"
    cond = Condition(torch.ones(8), 1, 0.25)
    _vector().save(folder / "alice.safetensors")
    _vector(condition=cond).save(folder / "bob.safetensors")
    _vector().save(folder / "carol.safetensors")
    _vector(model_name="llama").save(folder / "other_model.safetensors")
    _vector(d=16).save(folder / "wide.safetensors")
    _vector(layers=(5,)).save(folder / "deep.safetensors")
    cond.save(folder / "conditions" / "careful.safetensors")
    (folder / "pickled.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    outside = tmp_path / "outside.safetensors"
    _vector().save(outside)
    os.symlink(outside, folder / "link.safetensors")
    store = VectorStore(folder, MODEL, max_loaded=2)
    assert torch.equal(store.vector("alice").directions[1], _vector().directions[1])
    assert store.vector("bob").condition.threshold == 0.25
    assert store.condition("careful").layer == 1
    store.vector("carol")
    assert len(store) == 2 and "alice" not in store._vectors  # least recently used went
    for name, status, match in (
        ("nobody", 404, "no vector named 'nobody'"),
        ("other_model", 400, "built on 'llama', the server runs 'tiny-random'"),
        ("wide", 400, "d_model is 16"),
        ("deep", 400, "layers \\[5\\]"),
        ("pickled", 400, "cannot be read"),
        ("link", 400, "outside"),
        ("../vectors/alice", 400, "plain name"),
    ):
        with pytest.raises(SpecError, match=match) as err:
            store.vector(name)
        assert err.value.status == status and err.value.field == "steer_user"
    with pytest.raises(SpecError, match="no condition named 'rash'") as err:
        store.condition("rash")
    assert err.value.status == 404
    assert store.vector("carol") is store.vector("carol")  # still served after the refusals
    with pytest.raises(FileNotFoundError):
        VectorStore(tmp_path / "missing", MODEL)


def test_the_store_checks_a_vector_and_its_condition_as_a_pair(tmp_path):
    folder = tmp_path / "vectors"
    early = Condition(torch.ones(8), 0, 0.1)
    _vector(layers=(1,), condition=early).save(folder / "ok.safetensors")
    _vector(layers=(0,)).save(folder / "shallow.safetensors")
    Condition(torch.ones(8), 1, 0.1).save(folder / "conditions" / "late.safetensors")
    Condition(torch.ones(8), 0, 0.1, hook="hook_resid_mid").save(
        folder / "conditions" / "mid.safetensors"
    )
    store = VectorStore(folder, MODEL)
    _, cond = store.steering(SteerSpec("ok", 1.0))
    assert cond is not None and cond.layer == 0
    assert store.steering(SteerSpec("ok", 1.0, condition="none"))[1] is None
    with pytest.raises(SpecError, match=r"after blocks\.0\.hook_resid_post which it gates") as err:
        store.steering(SteerSpec("shallow", 1.0, condition="late"))
    assert err.value.field == "steer_condition"
    with pytest.raises(SpecError, match="hook_resid_mid cannot be served"):
        store.steering(SteerSpec("ok", 1.0, condition="mid"))
    plain = VectorStore(folder, ServedModel("tiny-random", 8, 2, conditions=False))
    with pytest.raises(SpecError, match="without conditions") as err:
        plain.steering(SteerSpec("ok", 1.0))
    assert err.value.field == "steer_user"
    assert plain.steering(SteerSpec("ok", 1.0, condition="none"))[1] is None


def test_a_vector_saved_again_is_read_again(tmp_path):
    store = VectorStore(tmp_path, MODEL)
    path = tmp_path / "alice.safetensors"
    SteeringVector({1: torch.zeros(8)}, model_name="tiny-random").save(path)
    assert torch.equal(store.vector("alice").directions[1], torch.zeros(8))
    SteeringVector({1: torch.ones(8)}, model_name="tiny-random").save(path)
    os.utime(path, ns=(1, 10**18))  # a new modification time, whatever the clock's resolution
    assert torch.equal(store.vector("alice").directions[1], torch.ones(8))


def test_the_worker_refuses_an_engine_that_would_mix_requests_up():
    from types import SimpleNamespace

    from steerlens.serve.worker import _check_engine

    def config(prefix: bool, eager: bool, chunked: bool) -> SimpleNamespace:
        return SimpleNamespace(
            cache_config=SimpleNamespace(enable_prefix_caching=prefix),
            model_config=SimpleNamespace(enforce_eager=eager),
            scheduler_config=SimpleNamespace(enable_chunked_prefill=chunked),
        )

    _check_engine(config(False, True, False), conditions=True)
    _check_engine(config(False, True, True), conditions=False)
    for cfg, match in (
        (config(True, True, False), "prefix caching"),
        (config(False, False, False), "enforce-eager"),
        (config(False, True, True), "chunked prefill"),
    ):
        with pytest.raises(RuntimeError, match=match):
            _check_engine(cfg, conditions=True)
