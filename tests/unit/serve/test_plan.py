"""The serving plan (pure torch) steers a step's flattened tokens exactly as
``add_vector_hook`` / ``steering_hooks`` steer a padded batch: per request its vector, α and
gate, whatever mix of prefill and decode the step holds, and its condition read at the prompt
as the condition reader reads it."""

from __future__ import annotations

import pytest
import torch

from steerlens.core.conditions import Condition
from steerlens.core.gates import FirstK, Gate
from steerlens.core.hooks import ConditionState, add_vector_hook
from steerlens.core.vectors import SteeringVector
from steerlens.serve.plan import RequestSteering, StepSteering, plan_step

D, LAYER = 16, 1
PROMPTS = [5, 3, 7, 4]  # prompt lengths
TOTALS = [9, 8, 7, 6]  # prompt + generated tokens
GATES = ["all", "prefill", FirstK(2), "generated"]


class _Hook:
    name = "blocks.1.hook_resid_post"


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    resid = torch.randn(len(PROMPTS), max(TOTALS), D, generator=g)
    directions = torch.randn(len(PROMPTS), D, generator=g)
    alphas = torch.tensor([1.5, -2.0, 0.75, 3.0])
    return resid, directions, alphas


def _requests(directions, alphas, gates, conditions=None):
    return [
        RequestSteering(
            SteeringVector({LAYER: directions[i]}),
            float(alphas[i]),
            Gate.parse(gates[i]),
            None if conditions is None else conditions[i],
        )
        for i in range(len(directions))
    ]


def _reference(resid, directions, alphas, gate):
    """One padded forward pass over prompt + response (the scoring form of the hook)."""
    hook = add_vector_hook(directions, alphas, gate, prompt_lengths=PROMPTS)
    return hook(resid.clone(), hook=_Hook())


def _steps(schedule):
    """Each step: [(request, first position, n tokens)]; yields (its requests, its plan, the
    (request, position) of every flattened token)."""
    for step in schedule:
        loc, where = [0], []
        for req, first, n in step:
            loc.append(loc[-1] + n)
            where += [(req, first + k) for k in range(n)]
        reqs = [s[0] for s in step]
        yield reqs, plan_step(loc, [s[1] for s in step], [PROMPTS[r] for r in reqs]), where


def _flat(resid, where):
    return torch.stack([resid[r, p] for r, p in where]) if where else torch.zeros(0, D)


# every request prefilled in one step, then decoded one token a step, the second request
# arriving late (its prefill beside the others' decode), the third's prompt-only at the end
SCHEDULE = [
    [(0, 0, 5), (2, 0, 7)],
    [(0, 5, 1), (1, 0, 3), (2, 7, 0)],
    [(0, 6, 1), (1, 3, 1), (3, 0, 4)],
    [(0, 7, 1), (1, 4, 1), (3, 4, 1)],
    [(0, 8, 1), (1, 5, 2), (3, 5, 1)],
    [(1, 7, 1)],
]


@pytest.mark.parametrize("gate", ["all", "prefill", FirstK(0), FirstK(2), "generated"])
def test_a_step_steers_each_request_as_the_padded_hook_does(gate):
    resid, directions, alphas = _batch()
    want = _reference(resid, directions, alphas, gate)
    seen = set()
    for reqs, plan, where in _steps(SCHEDULE):
        steering = StepSteering(plan, _requests(directions[reqs], alphas[reqs], [gate] * len(reqs)))
        out = steering.steer(LAYER, _flat(resid, where))
        for t, (r, p) in enumerate(where):
            assert torch.equal(out[t], want[r, p]), (r, p)  # the same arithmetic: exact
            seen.add((r, p))
    assert seen == {(r, p) for r in range(4) for p in range(TOTALS[r])}


def test_per_request_gates_vectors_and_layers_in_one_step():
    """Four requests with four gates, one unsteered and one whose vector has another layer,
    in one prefill step of their whole sequences: row i equals its own padded run."""
    resid, directions, alphas = _batch(1)
    plan = plan_step([0, *torch.tensor(TOTALS).cumsum(0).tolist()], [0] * 4, PROMPTS)
    flat = torch.cat([resid[i, : TOTALS[i]] for i in range(4)])
    reqs = _requests(directions, alphas, GATES)
    reqs[3] = RequestSteering(None)  # unsteered
    reqs[1] = RequestSteering(SteeringVector({LAYER + 1: directions[1]}), 2.0)
    out = StepSteering(plan, reqs).steer(LAYER, flat)
    pieces = out.split(TOTALS)
    for i in (0, 2):
        solo = add_vector_hook(directions[i], float(alphas[i]), GATES[i])
        assert torch.equal(pieces[i], solo(resid[i : i + 1, : TOTALS[i]].clone(), hook=_Hook())[0])
    assert torch.equal(pieces[1], resid[1, : TOTALS[1]]) and torch.equal(pieces[3], resid[3, :6])
    other = StepSteering(plan, reqs).steer(LAYER + 1, flat).split(TOTALS)
    assert torch.equal(other[0], resid[0, :9]) and not torch.equal(other[1], resid[1, :8])


@pytest.mark.parametrize("pool", ["mean", "last"])
@pytest.mark.parametrize("soft", [None, 0.5])
def test_the_condition_is_read_at_the_prompt_as_the_reader_reads_it(pool, soft):
    resid, directions, alphas = _batch(2)
    g = torch.Generator().manual_seed(3)
    direction = torch.randn(D, generator=g)
    # each request's own decision, as the reader makes it on its prompt alone
    states = [
        ConditionState(Condition(direction, LAYER, 0.0, pool=pool, soft=soft)) for _ in PROMPTS
    ]
    projections = [
        float(s.condition.project(_pooled(resid[i, : PROMPTS[i]], pool))[0])
        for i, s in enumerate(states)
    ]
    threshold = sorted(projections)[1] + 1e-3 * abs(sorted(projections)[2] - sorted(projections)[1])
    cond = Condition(direction, LAYER, threshold, pool=pool, soft=soft)
    factors = [
        float(ConditionState(cond).decide(resid[i : i + 1, : PROMPTS[i]])[0]) for i in range(4)
    ]
    if soft is None:
        assert sorted(factors) == [0.0, 0.0, 1.0, 1.0]  # the threshold splits them
    kept: dict[int, float | None] = {}
    for reqs, plan, where in _steps(SCHEDULE):
        flat = _flat(resid, where)
        steering = StepSteering(
            plan,
            _requests(directions[reqs], alphas[reqs], ["all"] * len(reqs), [cond] * len(reqs)),
            [kept.get(r) for r in reqs],
        )
        steering.decide(cond.hook_point, flat)
        out = steering.steer(LAYER, flat)
        for r, f in zip(reqs, steering.factors, strict=True):
            kept[r] = f
        for t, (r, p) in enumerate(where):
            hook = add_vector_hook(directions[r], float(alphas[r]) * factors[r])
            want = hook(resid[r : r + 1, : p + 1].clone(), hook=_Hook())[0, p]
            torch.testing.assert_close(out[t], want, rtol=1e-6, atol=1e-6)
    assert [kept[r] for r in range(4)] == pytest.approx(factors, abs=1e-6)


def _pooled(prompt, pool):
    return (prompt[-1] if pool == "last" else prompt.mean(dim=0)).unsqueeze(0)


def test_a_conditioned_request_first_seen_mid_sequence_is_refused():
    direction = torch.ones(D)
    cond = Condition(direction, LAYER, 0.0)
    plan = plan_step([0, 1], [5], [5])  # a decode step, never prefilled here
    req = RequestSteering(SteeringVector({LAYER: direction}), 1.0, condition=cond)
    with pytest.raises(RuntimeError, match="chunked prefill and prefix caching off"):
        StepSteering(plan, [req])
    # a chunk of the prompt (chunked prefill) is not a prefill pass either
    with pytest.raises(RuntimeError, match="not computed whole"):
        StepSteering(plan_step([0, 3], [0], [5]), [req])
    assert StepSteering(plan, [req], [1.0]).factors == [1.0]  # decided earlier: fine


def test_a_condition_read_after_the_point_it_gates_is_refused():
    direction = torch.ones(D)
    late = Condition(direction, LAYER + 1, 0.0)
    req = RequestSteering(SteeringVector({LAYER: direction}), 1.0, condition=late)
    steering = StepSteering(plan_step([0, 4], [0], [4]), [req])
    with pytest.raises(RuntimeError, match="at or before the earliest steered point"):
        steering.steer(LAYER, torch.zeros(4, D))


def test_bad_step_metadata_is_refused():
    with pytest.raises(ValueError, match="one more than the requests"):
        plan_step([0, 2], [0, 0], [2, 2])
    with pytest.raises(ValueError, match="start at 0"):
        plan_step([1, 2], [0], [2])
    with pytest.raises(ValueError, match="prompt lengths must be >= 1"):
        plan_step([0, 2], [0], [0])
    plan = plan_step([0, 3, 4], [0, 6], [3, 2])
    assert plan.rows.tolist() == [0, 0, 0, 1] and plan.positions.tolist() == [0, 1, 2, 6]
    assert plan.prefill.tolist() == [True, False]
    with pytest.raises(ValueError, match="2 request specs for 1 requests"):
        StepSteering(plan_step([0, 1], [0], [1]), [RequestSteering(None)] * 2)


def test_the_residual_dtype_is_kept_and_the_sum_is_float32():
    resid = torch.randn(6, D).to(torch.bfloat16)
    v = torch.randn(D)
    steering = StepSteering(
        plan_step([0, 6], [0], [6]), [RequestSteering(SteeringVector({LAYER: v}), 2.0)]
    )
    out = steering.steer(LAYER, resid)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (resid.float() + 2.0 * v).to(torch.bfloat16))
