from __future__ import annotations

import pytest
import torch
from conftest import PROMPTS, no_hooks_left, on_device

import steerlens as sl


def _resids(model, ids, layers):
    """resid_post at every layer of one forward pass (captured after any steering hook)."""
    out = {}

    def grab(layer):
        def fn(x, *, hook):
            out[layer] = x.detach().cpu()

        return fn

    model.run_with_hooks(
        on_device(model, ids), fwd_hooks=[(sl.resid_post(lyr), grab(lyr)) for lyr in layers]
    )
    return out


def test_hook_names():
    assert sl.resid_post(3) == "blocks.3.hook_resid_post"
    assert sl.resid_pre(0) == "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match="hook must be"):
        sl.hook_name(1, "hook_nope")
    with pytest.raises(ValueError, match="non-negative"):
        sl.resid_post(-1)


def test_patched_residual_is_original_plus_alpha_v_at_hooked_layer_only(tiny):
    ids = sl.tokens.tokenize(tiny, ["the quick brown fox"])[0][None]
    layers = list(range(tiny.cfg.n_layers))
    v = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))
    vec = sl.SteeringVector({2: v}, model_name="tiny-random")
    with torch.no_grad():
        base = _resids(tiny, ids, layers)
        with sl.steering(tiny, vec, alpha=2.5):
            steered = _resids(tiny, ids, layers)
    for layer in (0, 1):  # upstream of the hook: untouched
        torch.testing.assert_close(steered[layer], base[layer], rtol=0, atol=0)
    torch.testing.assert_close(steered[2], base[2] + 2.5 * v, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(steered[3], base[3], atol=1e-3)  # and it propagates downstream
    assert no_hooks_left(tiny)


@pytest.mark.parametrize(
    ("gate", "expected"),
    [
        ("all", [1, 1, 1, 1, 1, 1, 1, 1]),
        ("prefill", [1, 1, 1, 1, 1, 0, 0, 0]),
        (sl.FirstK(2), [1, 1, 1, 1, 1, 1, 1, 0]),
        (sl.FirstK(0), [1, 1, 1, 1, 1, 0, 0, 0]),
        ("generated", [0, 0, 0, 0, 0, 1, 1, 1]),
    ],
)
def test_gates_count_positions_across_kv_cache_steps(gate, expected):
    """A 5-token prefill, then three one-position decoding steps, as under KV-cache generation."""
    v = torch.ones(4)
    fn = sl.add_vector_hook(v, alpha=3.0, gate=gate)
    got = []
    prefill = torch.zeros(2, 5, 4)
    got += (fn(prefill, hook=None)[0, :, 0] / 3.0).tolist()
    for _ in range(3):
        got += (fn(torch.zeros(2, 1, 4), hook=None)[0, :, 0] / 3.0).tolist()
    assert got == expected
    # a new multi-position call starts a new sequence
    assert (fn(torch.zeros(1, 3, 4), hook=None)[0, :, 0] / 3.0).tolist() == expected[:3]


def test_per_row_alpha_in_hook():
    fn = sl.add_vector_hook(torch.ones(3), alpha=[0.0, 1.0, -2.0])
    out = fn(torch.zeros(3, 2, 3), hook=None)
    assert out[:, 0, 0].tolist() == [0.0, 1.0, -2.0]
    with pytest.raises(ValueError, match="alpha has 3 values but the batch has 2"):
        sl.add_vector_hook(torch.ones(3), alpha=[0.0, 1.0, -2.0])(torch.zeros(2, 2, 3), hook=None)


def test_bad_gate_and_alpha():
    with pytest.raises(ValueError, match="gate must be"):
        sl.add_vector_hook(torch.ones(3), gate="sometimes")
    with pytest.raises(ValueError, match="non-negative"):
        sl.FirstK(-1)
    with pytest.raises(ValueError, match="NaN"):
        sl.add_vector_hook(torch.ones(3), alpha=[float("nan")])


def test_hooks_removed_after_exception(tiny, rand_vec):
    with pytest.raises(RuntimeError, match="boom"), sl.steering(tiny, rand_vec, alpha=1.0):
        assert not no_hooks_left(tiny)
        raise RuntimeError("boom")
    assert no_hooks_left(tiny)


def test_partial_registration_failure_rolls_back(tiny, rand_vec, monkeypatch):
    from transformer_lens.hook_points import HookPoint

    real = HookPoint.add_hook
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("registration failed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HookPoint, "add_hook", flaky)
    with pytest.raises(RuntimeError, match="registration failed"), sl.steering(tiny, rand_vec):
        pass
    assert calls["n"] == 2
    monkeypatch.undo()
    assert no_hooks_left(tiny)


def test_nested_contexts_add_and_unwind(tiny):
    ids = sl.tokens.tokenize(tiny, ["nested"])[0][None]
    d = tiny.cfg.d_model
    v1 = sl.SteeringVector({1: torch.ones(d)})
    v2 = sl.SteeringVector({1: torch.arange(d).float() / d})
    with torch.no_grad():
        base = _resids(tiny, ids, [1])[1]
        with sl.steering(tiny, v1, alpha=2.0):
            with sl.steering(tiny, v2, alpha=-1.0):
                both = _resids(tiny, ids, [1])[1]
            outer = _resids(tiny, ids, [1])[1]
        after = _resids(tiny, ids, [1])[1]
    torch.testing.assert_close(both, base + 2.0 * v1.directions[1] - v2.directions[1])
    torch.testing.assert_close(outer, base + 2.0 * v1.directions[1])
    torch.testing.assert_close(after, base)
    assert no_hooks_left(tiny)


def test_steering_hooks_work_with_plain_model_hooks(tiny, rand_vec):
    ids = sl.tokens.tokenize(tiny, PROMPTS[:1])[0][None]
    pairs = sl.steering_hooks(tiny, rand_vec, alpha=1.5)
    assert [name for name, _ in pairs] == ["blocks.2.hook_resid_post", "blocks.3.hook_resid_post"]
    with torch.no_grad():
        with tiny.hooks(fwd_hooks=pairs):
            a = tiny(on_device(tiny, ids))
        with sl.steering(tiny, rand_vec, alpha=1.5):
            b = tiny(on_device(tiny, ids))
        c = tiny(on_device(tiny, ids))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_mismatched_vector_is_a_clear_error(tiny):
    bad_d = sl.SteeringVector({1: torch.ones(7)}, model_name="tiny-random")
    with pytest.raises(ValueError, match=r"d_model 7 .* d_model 64"), sl.steering(tiny, bad_d):
        pass
    bad_layer = sl.SteeringVector({9: torch.ones(64)})
    with pytest.raises(ValueError, match=r"layers \[9\] are out of range .* 0\.\.3"):
        sl.steering_hooks(tiny, bad_layer)
    other = sl.SteeringVector({1: torch.ones(64)}, model_name="meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(
        ValueError,
        match=r"built on 'meta-llama/Llama-3\.1-8B-Instruct' but the model is 'tiny-random'",
    ):
        sl.steering_hooks(tiny, other)
    assert no_hooks_left(tiny)


def test_reset_restarts_position_count(tiny_bridge):
    vec = sl.SteeringVector({1: torch.ones(64)})
    seen = []
    with sl.steering(tiny_bridge, vec, gate="prefill") as handle:
        fn = handle.hooks[0][1]
        seen.append(fn(torch.zeros(1, 4, 64), hook=None)[0, :, 0].tolist())
        seen.append(fn(torch.zeros(1, 1, 64), hook=None)[0, :, 0].tolist())
        handle.reset()
        seen.append(fn(torch.zeros(1, 1, 64), hook=None)[0, :, 0].tolist())
    assert seen == [[1.0] * 4, [0.0], [1.0]]


def test_per_row_alpha_follows_the_batch_rows():
    """Inside a steerlens batch, per-input values are picked by the batch's input rows."""
    from steerlens.core.hooks import batch_rows

    fn = sl.add_vector_hook(torch.ones(2), alpha=[10.0, 20.0, 30.0])
    with batch_rows([2, 0], n_inputs=3):
        out = fn(torch.zeros(2, 1, 2), hook=None)
    assert out[:, 0, 0].tolist() == [30.0, 10.0]
    rows = torch.stack([torch.full((2,), float(i)) for i in range(3)])  # a vector per input
    fn = sl.add_vector_hook(rows, alpha=1.0)
    with batch_rows([1, 2], n_inputs=3):
        assert fn(torch.zeros(2, 1, 2), hook=None)[:, 0, 0].tolist() == [1.0, 2.0]
    hook = sl.add_vector_hook(torch.ones(2), alpha=[1.0, 2.0, 3.0])
    with (
        pytest.raises(ValueError, match="alpha has 3 values but the call has 4 inputs"),
        batch_rows([0], n_inputs=4),
    ):
        hook(torch.zeros(1, 1, 2), hook=None)


@pytest.mark.parametrize(
    ("gate", "expected"),
    [
        ("prefill", [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]),
        (sl.FirstK(1), [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
        ("generated", [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]),
    ],
)
def test_gates_in_single_pass_scoring_use_each_rows_prompt_length(gate, expected):
    fn = sl.add_vector_hook(torch.ones(1), gate=gate, prompt_lengths=[2, 4])
    got = fn(torch.zeros(2, 5, 1), hook=None)[..., 0]
    assert got.tolist() == expected


def test_bf16_residual_is_rounded_once_and_gradients_reach_a_trainable_vector():
    model = sl.load_model("tiny-random", dtype="bfloat16")
    ids = sl.tokens.tokenize(model, ["bfloat16 steering"])[0][None]
    v = torch.randn(64, generator=torch.Generator().manual_seed(2)) * 0.37
    vec = sl.SteeringVector({2: v})
    with torch.no_grad():
        base = _resids(model, ids, [2])[2]
        with sl.steering(model, vec, alpha=3.3):
            steered = _resids(model, ids, [2])[2]
    assert steered.dtype == torch.bfloat16
    reference = base.float() + 3.3 * v  # the fp32 reference
    # alpha * v in float32, the sum cast once: exactly the reference rounded to bf16 ...
    torch.testing.assert_close(steered, reference.to(torch.bfloat16), rtol=0, atol=0)
    # ... not rounded twice (alpha * v cast to bf16 first), which these numbers tell apart
    assert not torch.equal(steered, base + (3.3 * v).to(torch.bfloat16))
    assert vec.directions[2].dtype == torch.float32 and torch.equal(vec.directions[2], v)

    trainable = torch.zeros(64, requires_grad=True)
    hook = sl.add_vector_hook(trainable, alpha=1.0)
    with model.hooks(fwd_hooks=[(sl.resid_post(2), hook)]):
        model(on_device(model, ids)).float().logsumexp(-1).mean().backward()
    assert trainable.grad is not None and trainable.grad.abs().sum() > 0
    with torch.no_grad():
        trainable.add_(1.0)  # an optimiser step: the next call must see it (no stale cast copy)
        with model.hooks(fwd_hooks=[(sl.resid_post(2), hook)]):
            after = _resids(model, ids, [2])[2]
    torch.testing.assert_close(after, (base.float() + 1.0).to(torch.bfloat16), rtol=0, atol=0)
    assert no_hooks_left(model)
