"""Steering-hook factories, per-row batch context and the ``steering()`` context manager.

Hook names come from ``steerlens.core.hook_names`` (``resid_post(layer)``), position gates
from ``steerlens.core.gates`` and conditions from ``steerlens.core.conditions``; this module
builds the hooks that apply them. Layer ``l`` is the output of decoder block ``l`` counted
from 0: TransformerLens ``blocks.{l}.hook_resid_post``, HF ``hidden_states[l + 1]``. Hook
functions use the TransformerLens signature ``fn(tensor, *, hook)``; ``steering_hooks``
returns plain ``(hook_name, fn)`` pairs usable with ``model.hooks(fwd_hooks=...)`` in
research code.

Gates count positions across forward calls, so they are right under KV-cache generation: a
call with more than one position starts a new sequence (its length is the prompt length); a
one-position call continues the current one. Outside generation every call is a prefill.
Call ``reset()`` on the handle ``steering()`` yields to start over explicitly.

A ``Condition`` as the gate, or with one (``Condition(...) & FirstK(4)``), adds a reader hook
at the condition's point: at each prompt pass it pools and projects each row's residual there
and sets the row's factor (``ConditionState``), by which the call's steering hooks scale
their α until the next prompt.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.core.conditions import Condition, Conditional, hook_order, split_gate
from steerlens.core.gates import FirstK, Gate, GateSpec, parse_gate
from steerlens.core.hook_names import HOOK_POINTS, hook_name, resid_post, resid_pre
from steerlens.core.models import HookedModel

if TYPE_CHECKING:
    from steerlens.core.vectors import SteeringVector

HookFn: TypeAlias = Callable[..., Tensor | None]
HookPair: TypeAlias = tuple[str | Callable[..., Any], HookFn]
"""A ``(hook_name, fn)`` pair as ``model.hooks(fwd_hooks=...)`` takes it."""
AnyGate: TypeAlias = GateSpec | Gate | Condition | Conditional
"""What a ``gate=`` argument takes: a position gate, a ``Condition``, or both (``&``)."""

__all__ = [
    "HOOK_POINTS",
    "AddSpec",
    "AnyGate",
    "ConditionState",
    "FirstK",
    "Gate",
    "GateSpec",
    "ReadSpec",
    "RowContext",
    "SteeringHandle",
    "active_steering",
    "add_vector_hook",
    "batch_rows",
    "condition_state",
    "conditions_open",
    "current_rows",
    "hook_name",
    "parse_gate",
    "pool_prompt",
    "resid_post",
    "resid_pre",
    "steering",
    "steering_hooks",
]


class _PositionCounter:
    """Absolute positions of the current call, counted across KV-cache steps.

    Every batch that a steerlens function runs (a new ``RowContext``) starts a new sequence,
    whatever its width, so a one-token-wide batch is never taken for a decoding step.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seen = 0
        self.prompt_len = 0
        self.batch: RowContext | None = None

    def advance(self, n_pos: int) -> tuple[int, int]:
        """Returns (first absolute position of this call, prompt length)."""
        ctx = current_rows()
        if ctx is not None and ctx is not self.batch:
            self.reset()
            self.batch = ctx
        if n_pos > 1 or self.seen == 0:
            self.seen, self.prompt_len = n_pos, n_pos
            return 0, n_pos
        first = self.seen
        self.seen += n_pos
        return first, self.prompt_len


@dataclass(frozen=True)
class RowContext:
    """Which inputs of a call the current batch holds, set by ``steerlens.core.batching``.

    ``rows[i]`` is the index (into the call's inputs) of batch row ``i``; per-row hooks index
    their α and vectors with it, so a value follows its prompt whatever order the batches
    run in. ``prompt_lengths[i]`` (single-pass scoring of prompt + response, right-padded) is
    the number of prompt positions of batch row ``i``: gates then treat the rest as
    generated tokens, as they are during generation.
    """

    rows: Tensor
    n_inputs: int
    prompt_lengths: Tensor | None = None
    last: Tensor | None = None
    """``[batch]``: the column of each row's last prompt token (a condition's ``"last"``)."""
    pool_masks: Tensor | None = None
    """``[batch, pos]`` bool: each row's prompt tokens a condition's ``"mean"`` pools (its
    content tokens when the steerlens function knows them, else every real prompt token)."""


_ROWS: ContextVar[RowContext | None] = ContextVar("steerlens_rows", default=None)


def current_rows() -> RowContext | None:
    """The batch being run by a steerlens function, or None outside one."""
    return _ROWS.get()


@contextmanager
def batch_rows(
    rows: Sequence[int],
    n_inputs: int,
    prompt_lengths: Sequence[int] | None = None,
    *,
    last: Tensor | None = None,
    pool_masks: Tensor | None = None,
) -> Iterator[RowContext]:
    """Tell per-row hooks which inputs the batch run inside this block holds."""
    ctx = RowContext(
        torch.as_tensor(list(rows), dtype=torch.long),
        int(n_inputs),
        None if prompt_lengths is None else torch.as_tensor(list(prompt_lengths)),
        last,
        pool_masks,
    )
    token = _ROWS.set(ctx)
    try:
        yield ctx
    finally:
        _ROWS.reset(token)


def _per_row(values: Tensor, batch: int, what: str) -> Tensor:
    """``values`` (one entry per input of the call) for the rows of the current batch."""
    ctx = current_rows()
    if ctx is None:
        if values.shape[0] != batch:
            raise ValueError(f"{what} has {values.shape[0]} values but the batch has {batch} rows")
        return values
    if ctx.rows.numel() != batch:
        raise ValueError(
            f"{what}: the hook ran on {batch} rows inside a steerlens batch of "
            f"{ctx.rows.numel()} inputs, so its rows cannot be matched to inputs"
        )
    if values.shape[0] != ctx.n_inputs:
        raise ValueError(
            f"{what} has {values.shape[0]} values but the call has {ctx.n_inputs} inputs"
        )
    return values[ctx.rows.to(values.device)]


def _alpha_tensor(alpha: float | Sequence[float] | Tensor) -> float | Tensor:
    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        return float(alpha)
    t = torch.as_tensor(alpha, dtype=torch.float32).flatten()
    if t.numel() == 0:
        raise ValueError("alpha is empty")
    if not torch.isfinite(t).all():
        raise ValueError("alpha has NaN or inf values")
    return t


class ConditionState:
    """One condition's per-row decisions in a steering call: its reader hook (``reader()``)
    makes them at each prompt pass; the call's steering hooks scale α by them until the next
    prompt. ``projections`` keeps, per input of the latest call, its projection."""

    def __init__(self, condition: Condition) -> None:
        self.condition = condition
        self._factor: Tensor | None = None
        self._decided_for: RowContext | None = None  # the batch the factors belong to
        self.projections: Tensor | None = None
        self._counter = _PositionCounter()

    def reset(self) -> None:
        self._counter.reset()
        self._factor = None

    def reader(self) -> HookFn:
        """The hook that reads the residual at the condition's point (it changes nothing)."""

        def read(resid: Tensor, *, hook: Any) -> None:
            first, _ = self._counter.advance(resid.shape[1])
            if first == 0:  # a prompt: decide its rows
                self.decide(resid)

        read.reset = self.reset  # type: ignore[attr-defined]
        read.spec = ReadSpec(self)  # type: ignore[attr-defined]
        return read

    def decide(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, " batch"]:
        """Pool each row's prompt, project, decide; returns the factors (float32)."""
        proj = self.condition.project(pool_prompt(resid, self.condition.pool))
        self._factor = self.condition.weights(proj)
        ctx = self._decided_for = current_rows()
        p = proj.detach().float().cpu()
        if ctx is None:
            self.projections = p
        else:
            if self.projections is None or self.projections.shape[0] != ctx.n_inputs:
                self.projections = torch.full((ctx.n_inputs,), float("nan"))
            self.projections[ctx.rows] = p
        return self._factor

    def factor(self, batch: int, device: torch.device) -> Tensor:
        """The current prompt's factors ``[batch]`` (float32) on ``device``."""
        if (
            self._factor is None
            or self._factor.shape[0] != batch
            or self._decided_for is not current_rows()
        ):
            raise RuntimeError(
                f"{self.condition!r} has not decided this batch: its hook point must run "
                "before the steering it gates (steering_hooks checks this; hooks made by hand "
                "must register the reader first)"
            )
        return self._factor.to(device)

    @property
    def decisions(self) -> Tensor | None:
        """Per input of the latest call: steered (projection above the threshold)."""
        p = self.projections
        return None if p is None else p > self.condition.threshold


def pool_prompt(
    resid: Float[Tensor, "batch pos d_model"], pool: str
) -> Float[Tensor, "batch d_model"]:
    """Each row's prompt pooled in float32: its ``"last"`` prompt token, or the ``"mean"`` over
    its pooled tokens. Inside a steerlens call the batch's row context says which (``last``,
    ``pool_masks``); in your own forward calls, the last position and every position."""
    ctx = current_rows()
    batch, n_pos, _ = resid.shape
    x = resid.detach().float()
    if pool == "last":
        last = ctx.last if ctx is not None and ctx.last is not None else None
        idx = torch.full((batch,), n_pos - 1) if last is None else last.clamp(max=n_pos - 1)
        return x[torch.arange(batch, device=x.device), idx.to(x.device)]
    masks = ctx.pool_masks if ctx is not None and ctx.pool_masks is not None else None
    if masks is None:
        return x.mean(dim=1)
    keep = masks[:, :n_pos].to(x.device)
    return torch.stack([x[row, keep[row]].mean(dim=0) for row in range(batch)])


@dataclass(frozen=True)
class ReadSpec:
    """``fn.spec`` of a condition's reader hook: engines that hold the steering as data (the
    compiled engine) call ``state.decide`` at the prompt themselves."""

    state: ConditionState


@dataclass(frozen=True)
class AddSpec:
    """What an ``add_vector_hook`` adds, as data: engines that cannot call a Python hook on
    every step (the compiled decoding engine, ``steerlens.core.engines.compiled``) load it into their
    own buffers. ``hook_fn.spec`` of every hook ``add_vector_hook`` makes."""

    direction: Tensor
    """``[d_model]`` or one per input ``[row, d_model]``."""
    alpha: float | Tensor
    """A float or one value per input."""
    gate: Gate
    prompt_lengths: Tensor | None
    condition: ConditionState | None = None
    """The condition whose per-row factor scales α (set at the prompt), or None."""

    def rows(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The vector ``[batch, d_model]`` and α ``[batch]`` (float32) of each row of the batch
        being run, picked as the hook picks them (``batch_rows``)."""
        v = self.direction.detach().to(device, torch.float32)
        v = _per_row(v, batch, "the per-row vector") if v.ndim == 2 else v.expand(batch, -1)
        if isinstance(self.alpha, Tensor):
            a = _per_row(self.alpha.to(device, torch.float32), batch, "alpha")
        else:
            a = torch.full((batch,), self.alpha, dtype=torch.float32, device=device)
        return v, a


def add_vector_hook(
    direction: Float[Tensor, " d_model"] | Float[Tensor, "row d_model"],
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: GateSpec | Gate = "all",
    *,
    prompt_lengths: Sequence[int] | Tensor | None = None,
    condition: ConditionState | None = None,
) -> HookFn:
    """A hook ``fn(resid, *, hook)`` that returns ``resid + alpha * direction`` on gated positions.

    Args:
        direction: one vector ``[d_model]``, or one per input ``[row, d_model]``.
        alpha: a float or one value per input.
        gate: ``"all"``, ``"prefill"``, ``FirstK(k)`` or ``"generated"``.
        prompt_lengths: per input, its number of prompt positions, for a single forward pass
            over prompt + response (right-padded): the gate then treats the positions after
            the prompt as generated tokens. A steerlens scoring function sets this itself.
        condition: a ``ConditionState`` whose reader hook runs at or before this one: each
            row's α is multiplied by its factor (``steering_hooks`` wires both).

    Per-input values are picked by the rows of the batch being run (``batch_rows``, set by
    every steerlens function that runs the model), so they follow their prompts through
    sorting and batching; outside one they must match the batch row for row.

    The sum is computed in float32 and cast once to the residual's dtype (bf16/fp16-safe). A
    direction that requires grad (a vector being trained) is never cached as a cast copy, so
    gradients reach it. Each hook counts positions itself: make one hook per hook point
    (``steering_hooks`` does).
    """
    if direction.ndim not in (1, 2):
        raise ValueError(
            f"direction must be [d_model] or [row, d_model], got shape {tuple(direction.shape)}"
        )
    g = Gate.parse(gate)
    a = _alpha_tensor(alpha)
    lengths = None if prompt_lengths is None else torch.as_tensor(prompt_lengths).flatten()
    counter = _PositionCounter()
    cache: dict[torch.device, tuple[Tensor, float | Tensor]] = {}
    d_model = direction.shape[-1]

    def prepared(device: torch.device) -> tuple[Tensor, float | Tensor]:
        if direction.requires_grad:  # trainable: a fresh differentiable view every call
            return direction.to(device, torch.float32), a.to(device) if isinstance(a, Tensor) else a
        if device not in cache:
            cache[device] = (
                direction.detach().to(device, torch.float32),
                a.to(device) if isinstance(a, Tensor) else a,
            )
        return cache[device]

    def hook_fn(resid: Tensor, *, hook: Any) -> Tensor:
        batch, n_pos, d = resid.shape
        if d != d_model:
            raise ValueError(
                f"{getattr(hook, 'name', 'hook')}: vector has d_model {d_model}, activation has {d}"
            )
        first, prompt_len = counter.advance(n_pos)
        v, scale = prepared(resid.device)
        if v.ndim == 2:
            v = _per_row(v, batch, "the per-row vector").unsqueeze(1)  # [b, 1, d]
        if isinstance(scale, Tensor):
            scale = _per_row(scale, batch, "alpha")
        if condition is not None:  # α x the row's factor, as the compiled engine's buffer holds it
            w = condition.factor(batch, resid.device)
            scale = (scale if isinstance(scale, Tensor) else torch.full_like(w, scale)) * w
        if isinstance(scale, Tensor):
            scale = scale.view(-1, 1, 1)
        delta = scale * v  # float32
        if not g.is_all:
            delta = delta * _gate_mask(g, first, n_pos, prompt_len, lengths, batch, resid.device)
        return (resid.float() + delta).to(resid.dtype)

    hook_fn.reset = counter.reset  # type: ignore[attr-defined]
    hook_fn.spec = AddSpec(direction, a, g, lengths, condition)  # type: ignore[attr-defined]
    return hook_fn


def _gate_mask(
    g: Gate,
    first: int,
    n_pos: int,
    prompt_len: int,
    own_lengths: Tensor | None,
    batch: int,
    device: torch.device,
) -> Tensor:
    """``[batch or 1, n_pos, 1]``: 1 where the gate steers, from per-row or shared prompt ends."""
    ctx = current_rows()
    if ctx is not None and ctx.prompt_lengths is not None:
        ends = ctx.prompt_lengths.to(device).view(-1, 1)
    elif own_lengths is not None:
        ends = _per_row(own_lengths, batch, "prompt_lengths").to(device).view(-1, 1)
    else:
        ends = torch.tensor([[prompt_len]], device=device)
    offsets = torch.arange(first, first + n_pos, device=device).view(1, -1) - ends
    return ((offsets >= g.start) & (offsets < g.stop)).float().unsqueeze(-1)


def _check_hook_points(model: HookedModel, names: Sequence[str]) -> None:
    known = model.hook_dict
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(
            f"{model.cfg.model_name} has no hook point(s) {missing} "
            f"(it has {model.cfg.n_layers} layers, 0..{model.cfg.n_layers - 1})"
        )


def _stacked(
    vectors: SteeringVector | Sequence[SteeringVector],
) -> tuple[SteeringVector, dict[int, Tensor]]:
    """One vector's directions, or per layer a ``[row, d_model]`` stack of per-row vectors
    (a row without that layer gets zeros there). Returns a representative and the directions."""
    from steerlens.core.vectors import SteeringVector

    if isinstance(vectors, SteeringVector):
        return vectors, dict(vectors.directions)
    vecs = list(vectors)
    if not vecs or not all(isinstance(v, SteeringVector) for v in vecs):
        raise TypeError("steering takes a SteeringVector or a non-empty list of them (one a row)")
    first = vecs[0]
    for i, v in enumerate(vecs):
        if v.hook != first.hook or v.d_model != first.d_model:
            raise ValueError(
                f"per-row vector {i} is on {v.hook} with d_model {v.d_model}; "
                f"vector 0 is on {first.hook} with d_model {first.d_model}"
            )
    layers = sorted({layer for v in vecs for layer in v.layers})
    out = {}
    for layer in layers:
        rows = [
            v.directions[layer].float().cpu()  # differentiable: per-row vectors can train
            if layer in v.directions
            else torch.zeros(first.d_model)
            for v in vecs
        ]
        out[layer] = torch.stack(rows)
    return first, out


def steering_hooks(
    model: HookedModel,
    vector: SteeringVector | Sequence[SteeringVector],
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: AnyGate = "all",
    *,
    prompt_lengths: Sequence[int] | Tensor | None = None,
) -> list[HookPair]:
    """Plain ``(hook_name, fn)`` pairs that add ``alpha * vector`` (validated against ``model``).

    ``vector`` may be a list with one vector per input row (a whole batch of users at once).
    With a ``Condition`` (as ``gate``, or carried by the vector: ``vector.conditioned(c)``)
    the first pair is its reader hook and the steering hooks scale α by its decisions.
    """
    vectors = [vector] if not isinstance(vector, Sequence) else list(vector)
    for v in vectors:
        v.validate(model)
    position, condition = split_gate(gate)
    condition = _condition(vectors, condition)
    first, directions = _stacked(vector)
    names = [hook_name(layer, first.hook) for layer in directions]
    _check_hook_points(model, names)
    pairs: list[HookPair] = []
    state = None
    if condition is not None:
        condition.validate(model)
        early = [
            layer
            for layer in directions
            if hook_order(layer, first.hook) < hook_order(condition.layer, condition.hook)
        ]
        if early:
            raise ValueError(
                f"{condition!r} is read at the prompt's pass, so it cannot gate steering at "
                f"{[hook_name(layer, first.hook) for layer in early]}, which runs before it: "
                "read the condition at or before the earliest steered point"
            )
        state = ConditionState(condition)
        pairs.append((condition.hook_point, state.reader()))
    pairs += [
        (name, add_vector_hook(d, alpha, position, prompt_lengths=prompt_lengths, condition=state))
        for name, d in zip(names, directions.values(), strict=True)
    ]
    return pairs


def _condition(vectors: Sequence[SteeringVector], given: Condition | None) -> Condition | None:
    """The call's condition: the gate's, else the one the vectors carry (the same object for
    every row), else None."""
    carried = {id(v.condition): v.condition for v in vectors if v.condition is not None}
    if given is not None:
        if carried:
            raise ValueError("the vector carries a condition and the gate gives another: give one")
        return given
    if not carried:
        return None
    if len(carried) > 1 or len(vectors) != sum(v.condition is not None for v in vectors):
        raise ValueError("per-row vectors must all carry the same condition (or none)")
    return next(iter(carried.values()))


def condition_state(pairs: Sequence[HookPair]) -> ConditionState | None:
    """The ``ConditionState`` of pairs made by ``steering_hooks``, or None."""
    for _, fn in pairs:
        spec = getattr(fn, "spec", None)
        if isinstance(spec, ReadSpec):
            return spec.state
    return None


@dataclass
class SteeringHandle:
    """What ``steering()`` yields: the registered hooks, with ``reset()`` for the gates."""

    hooks: list[HookPair]

    @property
    def condition(self) -> ConditionState | None:
        """The block's condition state (``projections``, ``decisions``), or None."""
        return condition_state(self.hooks)

    def reset(self) -> None:
        """Forget counted positions: the next call is a new prompt."""
        for _, fn in self.hooks:
            fn.reset()  # type: ignore[attr-defined]


_ACTIVE: weakref.WeakKeyDictionary[Any, list[HookPair]] = weakref.WeakKeyDictionary()


def active_steering(model: HookedModel) -> list[HookPair]:
    """The ``(hook_name, fn)`` pairs of every ``steering()`` context open on ``model``.

    The generation fast path carries them onto its plain-PyTorch hooks, so an open
    ``steering()`` block steers whichever engine runs.
    """
    return list(_ACTIVE.get(model, []))


def conditions_open(model: HookedModel, pairs: Sequence[HookPair] = ()) -> bool:
    """Whether ``pairs`` or an open ``steering()`` block on ``model`` carries a condition (a
    steerlens function then hands it the prompts' content tokens to pool)."""
    return condition_state([*pairs, *active_steering(model)]) is not None


@contextmanager
def steering(
    model: HookedModel,
    vector: SteeringVector | Sequence[SteeringVector],
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: AnyGate = "all",
    *,
    prompt_lengths: Sequence[int] | Tensor | None = None,
) -> Iterator[SteeringHandle]:
    """Add ``alpha * vector`` to the residual stream inside the block.

    ``alpha`` (and ``vector``, as a list) may hold one value per input: inside a steerlens
    call (``generate``, ``cache_activations``, scoring) each value follows its prompt through
    sorting and batching; in your own forward calls, row ``i`` of the batch gets value ``i``.
    ``prompt_lengths`` serves your own single-pass scoring calls (see ``add_vector_hook``).
    ``gate`` may be a ``Condition`` (alone or ``& FirstK(k)``): each prompt is steered only if
    its pooled activation at the condition's point projects above the threshold; the handle's
    ``condition`` holds the latest call's ``projections`` and ``decisions``.

    Registration happens inside TransformerLens ``model.hooks()``, which adds hooks inside
    ``try`` and removes exactly the ones it added in ``finally`` — on normal exit, on an
    exception in the block, and when a registration part-way fails. Contexts nest: each
    removes only its own hooks.
    """
    pairs = steering_hooks(model, vector, alpha, gate, prompt_lengths=prompt_lengths)
    active = _ACTIVE.setdefault(model, [])
    with model.hooks(fwd_hooks=pairs):  # type: ignore[arg-type]
        active.extend(pairs)
        try:
            yield SteeringHandle(pairs)
        finally:
            for pair in pairs:
                active.remove(pair)
