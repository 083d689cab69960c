"""Per-request steering of one forward step whose tokens are flattened, as a serving engine
runs them (vLLM's V1 runner: every scheduled token of every request in one ``[tokens,
d_model]`` tensor, request ``i``'s tokens at ``query_start_loc[i]:query_start_loc[i + 1]``).
Pure torch, no vLLM: the worker (``steerlens.serve.worker``) builds a ``StepSteering`` from
the step's metadata and calls it at each residual point; tests compare it with
``steering_hooks`` on a padded batch.

The rule is steerlens' own (``steerlens.core.hooks.add_vector_hook``): token ``t`` of request
``i`` at absolute position ``p`` gets ``alpha_i * factor_i * v_i`` added where its gate
steers offset ``p - prompt_len_i``; ``factor_i`` is 1 without a condition, else the
condition's weight of the request's prompt pooled at its prefill pass (the step in which the
whole prompt is computed from position 0: chunked prefill and prefix caching must be off for
conditioned requests, and a conditioned request seen first mid-sequence is an error). The sum
is computed in float32 and cast once to the residual's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlens.core.conditions import Condition
from steerlens.core.gates import Gate
from steerlens.core.hook_names import hook_name
from steerlens.core.vectors import SteeringVector

__all__ = ["RequestSteering", "StepPlan", "StepSteering", "plan_step"]


@dataclass(frozen=True)
class StepPlan:
    """Where a step's flattened tokens come from: ``rows[t]`` is token ``t``'s request (its
    index in the step), ``positions[t]`` its absolute position in that request's sequence;
    per request, its prompt length and whether this step computes its whole prompt from
    position 0 (``prefill``: a condition reads it now)."""

    rows: Int[Tensor, " tokens"]
    positions: Int[Tensor, " tokens"]
    prompt_lengths: Int[Tensor, " requests"]
    starts: Int[Tensor, " requests"]
    prefill: Bool[Tensor, " requests"]

    @property
    def n_requests(self) -> int:
        return int(self.prompt_lengths.shape[0])


def plan_step(
    query_start_loc: Int[Tensor, " requests_plus_1"] | Sequence[int],
    num_computed: Int[Tensor, " requests"] | Sequence[int],
    prompt_lengths: Int[Tensor, " requests"] | Sequence[int],
) -> StepPlan:
    """The plan of one step from the runner's metadata: the cumulative token offsets of its
    requests (``query_start_loc``, ``n + 1`` values from 0), the tokens each had computed
    before this step (its KV cache) and each one's prompt length."""
    loc = torch.as_tensor(query_start_loc, dtype=torch.long).flatten().cpu()
    done = torch.as_tensor(num_computed, dtype=torch.long).flatten().cpu()
    plen = torch.as_tensor(prompt_lengths, dtype=torch.long).flatten().cpu()
    n = loc.numel() - 1
    if n < 0 or done.numel() != n or plen.numel() != n:
        raise ValueError(
            f"query_start_loc has {loc.numel()} values for {done.numel()} computed counts and "
            f"{plen.numel()} prompt lengths: it needs one more than the requests"
        )
    counts = loc[1:] - loc[:-1]
    if n and (loc[0] != 0 or (counts < 0).any()):
        raise ValueError(f"query_start_loc must start at 0 and not decrease, got {loc.tolist()}")
    if (plen < 1).any() or (done < 0).any():
        raise ValueError("prompt lengths must be >= 1 and computed counts >= 0")
    rows = torch.repeat_interleave(torch.arange(n), counts)
    within = torch.arange(int(loc[-1]) if n else 0) - torch.repeat_interleave(loc[:-1], counts)
    positions = done[rows] + within
    prefill = (done == 0) & (counts >= plen)
    return StepPlan(rows, positions, plen, loc[:-1].clone(), prefill)


@dataclass(frozen=True)
class RequestSteering:
    """One request's steering: its vector (None: unsteered), α, position gate, condition
    (None: none) and, for a mean-pooled condition, which prompt tokens it averages (None:
    all of them)."""

    vector: SteeringVector | None
    alpha: float = 0.0
    gate: Gate = field(default_factory=lambda: Gate.parse("all"))
    condition: Condition | None = None
    pool_mask: Bool[Tensor, " prompt"] | None = None


class StepSteering:
    """The steering of one step: ``decide`` reads conditions at a residual point, ``steer``
    adds the requests' vectors there. ``factors`` holds each request's condition weight
    (None until decided; requests without a condition: 1); after a prefill pass the worker
    keeps ``factors`` for the request's later steps and passes them back in. ``points`` are
    the full hook names the step reads or steers at (elsewhere there is nothing to do)."""

    def __init__(
        self,
        plan: StepPlan,
        requests: Sequence[RequestSteering],
        factors: Sequence[float | None] | None = None,
    ) -> None:
        if len(requests) != plan.n_requests:
            raise ValueError(f"{len(requests)} request specs for {plan.n_requests} requests")
        self.plan, self.requests = plan, list(requests)
        given = list(factors) if factors is not None else [None] * len(requests)
        self.factors: list[float | None] = [
            1.0 if r.condition is None else f for r, f in zip(self.requests, given, strict=True)
        ]
        late = [
            i
            for i, r in enumerate(self.requests)
            if r.condition is not None and given[i] is None and not bool(plan.prefill[i])
        ]
        if late:
            raise RuntimeError(
                f"requests {late} carry a condition but their prompt is not computed whole in "
                "this step and was not read before: serve conditions with chunked prefill and "
                "prefix caching off"
            )
        self.points: set[str] = set()
        for r in self.requests:
            if r.vector is not None and r.alpha != 0.0:
                self.points |= {hook_name(layer, r.vector.hook) for layer in r.vector.directions}
            if r.condition is not None:
                self.points.add(r.condition.hook_point)
        # per token, whether its request's gate steers its position (fixed for the step)
        gates = [r.gate for r in self.requests]
        starts = torch.tensor([g.start for g in gates], dtype=torch.float32)
        stops = torch.tensor([g.stop for g in gates], dtype=torch.float32)
        offsets = (plan.positions - plan.prompt_lengths[plan.rows]).float()
        rows = plan.rows
        self._inside = ((offsets >= starts[rows]) & (offsets < stops[rows])).float()
        self._alphas = torch.tensor([float(r.alpha) for r in self.requests], dtype=torch.float32)
        self._tables: dict[str, tuple[Tensor, Tensor]] = {}

    def decide(self, point: str, resid: Float[Tensor, "tokens d_model"]) -> None:
        """At residual point ``point`` (a full hook name): the prefilling requests whose
        condition reads here pool their prompt, project and set their factor."""
        plan = self.plan
        for i, r in enumerate(self.requests):
            c = r.condition
            if c is None or c.hook_point != point or not bool(plan.prefill[i]):
                continue
            start, n = int(plan.starts[i]), int(plan.prompt_lengths[i])
            prompt = resid[start : start + n].detach().float()
            if c.pool == "last":
                pooled = prompt[-1]
            else:
                keep = r.pool_mask
                pooled = prompt[keep.to(prompt.device)] if keep is not None else prompt
                pooled = pooled.mean(dim=0)
            self.factors[i] = float(c.weights(c.project(pooled.unsqueeze(0)))[0])

    def _table(self, layer: int, hook: str, d_model: int) -> tuple[Tensor, Tensor]:
        """(which requests steer at this point ``[requests]``, their vectors ``[requests,
        d_model]`` float32, zeros elsewhere), made once per point and step."""
        point = hook_name(layer, hook)
        if point not in self._tables:
            steers = torch.zeros(self.plan.n_requests, dtype=torch.bool)
            table = torch.zeros(self.plan.n_requests, d_model, dtype=torch.float32)
            for i, r in enumerate(self.requests):
                v = r.vector
                if v is None or v.hook != hook or layer not in v.directions:
                    continue
                d = v.directions[layer]
                if d.shape[-1] != d_model:
                    raise ValueError(
                        f"request {i}'s vector has d_model {d.shape[-1]}, the residual {d_model}"
                    )
                steers[i], table[i] = True, d.detach().float().cpu()
            self._tables[point] = (steers, table)
        return self._tables[point]

    def scale(
        self, layer: int, hook: str = "hook_resid_post", d_model: int | None = None
    ) -> Float[Tensor, " tokens"]:
        """Per token, what multiplies its request's vector at ``blocks.{layer}.{hook}``: α x the
        condition's factor x the gate (0 for requests whose vector has no such layer)."""
        width = d_model if d_model is not None else self._width()
        steers, _ = self._table(layer, hook, width)
        missing = [i for i in range(len(self.requests)) if steers[i] and self.factors[i] is None]
        if missing:
            cond = self.requests[missing[0]].condition
            point = cond.hook_point if cond is not None else "?"
            raise RuntimeError(
                f"request {missing[0]}'s condition reads at {point}, after "
                f"{hook_name(layer, hook)} which it gates: read the condition at or before the "
                "earliest steered point"
            )
        factors = torch.tensor([f if f is not None else 0.0 for f in self.factors])
        per_request = torch.where(steers, self._alphas * factors, torch.zeros(()))
        return per_request[self.plan.rows] * self._inside

    def _width(self) -> int:
        for r in self.requests:
            if r.vector is not None:
                return r.vector.d_model
        return 0

    def steer(
        self, layer: int, resid: Float[Tensor, "tokens d_model"], hook: str = "hook_resid_post"
    ) -> Float[Tensor, "tokens d_model"]:
        """``resid`` with each token's request vector at ``blocks.{layer}.{hook}`` added (a new
        tensor; the input is returned as is where nothing is steered)."""
        if hook_name(layer, hook) not in self.points:
            return resid
        d_model = resid.shape[-1]
        scale = self.scale(layer, hook, d_model)
        if not bool((scale != 0).any()):
            return resid
        _, table = self._table(layer, hook, d_model)
        device = resid.device
        delta = scale.to(device).unsqueeze(-1) * table.to(device)[self.plan.rows.to(device)]
        return (resid.float() + delta).to(resid.dtype)
