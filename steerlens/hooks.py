"""Hook names, position gates, steering-hook factories and the ``steering()`` context.

Layer ``l`` is the output of decoder block ``l`` counted from 0: TransformerLens
``blocks.{l}.hook_resid_post``, HF ``hidden_states[l + 1]``. Hook functions use the
TransformerLens signature ``fn(tensor, *, hook)``; ``steering_hooks`` returns plain
``(hook_name, fn)`` pairs usable with ``model.hooks(fwd_hooks=...)`` in research code.

Position gates count positions across forward calls, so they are right under KV-cache
generation (a prefill call over the prompt, then one position a step):

* ``"all"``: every position;
* ``"prefill"``: the prompt positions only;
* ``FirstK(k)``: the prompt plus the first ``k`` generated tokens (``FirstK(0) == "prefill"``);
* ``"generated"``: generated tokens only (the first generated token is therefore unsteered:
  it is predicted from the prompt's positions).

A call with more than one position starts a new sequence (its length is the prompt length);
a one-position call continues the current one. Outside generation every call is a prefill.
Call ``reset()`` on the handle ``steering()`` yields to start over explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.models import HookedModel

if TYPE_CHECKING:
    from steerlens.vectors import SteeringVector

HookFn: TypeAlias = Callable[..., Tensor | None]
HookPair: TypeAlias = tuple[str | Callable[..., Any], HookFn]
"""A ``(hook_name, fn)`` pair as ``model.hooks(fwd_hooks=...)`` takes it."""
HOOK_POINTS = ("hook_resid_post", "hook_resid_pre", "hook_resid_mid")

__all__ = [
    "HOOK_POINTS",
    "FirstK",
    "Gate",
    "GateSpec",
    "SteeringHandle",
    "add_vector_hook",
    "hook_name",
    "resid_post",
    "resid_pre",
    "steering",
    "steering_hooks",
]


def hook_name(layer: int, hook: str = "hook_resid_post") -> str:
    """Full TransformerLens hook name of a residual-stream point: ``blocks.{l}.{hook}``."""
    if hook not in HOOK_POINTS:
        raise ValueError(f"hook must be one of {HOOK_POINTS}, got {hook!r}")
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise ValueError(f"layer must be a non-negative int, got {layer!r}")
    return f"blocks.{layer}.{hook}"


def resid_post(layer: int) -> str:
    """``blocks.{layer}.hook_resid_post``: the output of block ``layer``."""
    return hook_name(layer, "hook_resid_post")


def resid_pre(layer: int) -> str:
    """``blocks.{layer}.hook_resid_pre``: the input of block ``layer``."""
    return hook_name(layer, "hook_resid_pre")


@dataclass(frozen=True)
class FirstK:
    """Gate: steer the prompt and the first ``k`` generated tokens."""

    k: int

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 0:
            raise ValueError(f"FirstK needs a non-negative int, got {self.k!r}")


GateSpec: TypeAlias = Literal["all", "prefill", "generated"] | FirstK


@dataclass(frozen=True)
class Gate:
    """A normalised gate: positions ``p`` with ``start <= p - prompt_len < stop`` are steered.

    Offsets are relative to the prompt length: the prompt is ``[-inf, 0)``.
    """

    start: float
    stop: float

    @classmethod
    def parse(cls, spec: GateSpec | Gate) -> Gate:
        if isinstance(spec, Gate):
            return spec
        if isinstance(spec, FirstK):
            return cls(float("-inf"), float(spec.k))
        table = {
            "all": cls(float("-inf"), float("inf")),
            "prefill": cls(float("-inf"), 0.0),
            "generated": cls(0.0, float("inf")),
        }
        if not isinstance(spec, str) or spec not in table:
            raise ValueError(
                f"gate must be 'all', 'prefill', 'generated' or FirstK(k), got {spec!r}"
            )
        return table[spec]

    @property
    def is_all(self) -> bool:
        return self.start == float("-inf") and self.stop == float("inf")


class _PositionCounter:
    """Absolute positions of the current call, counted across KV-cache steps."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seen = 0
        self.prompt_len = 0

    def advance(self, n_pos: int) -> tuple[int, int]:
        """Returns (first absolute position of this call, prompt length)."""
        if n_pos > 1 or self.seen == 0:
            self.seen, self.prompt_len = n_pos, n_pos
            return 0, n_pos
        first = self.seen
        self.seen += n_pos
        return first, self.prompt_len


def _alpha_tensor(alpha: float | Sequence[float] | Tensor) -> float | Tensor:
    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        return float(alpha)
    t = torch.as_tensor(alpha, dtype=torch.float32).flatten()
    if t.numel() == 0:
        raise ValueError("alpha is empty")
    if not torch.isfinite(t).all():
        raise ValueError("alpha has NaN or inf values")
    return t


def add_vector_hook(
    direction: Float[Tensor, " d_model"],
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: GateSpec | Gate = "all",
) -> HookFn:
    """A hook ``fn(resid, *, hook)`` that returns ``resid + alpha * direction`` on gated positions.

    ``alpha`` is a float or one value per batch row. Each hook counts positions itself, so make
    one hook per hook point (``steering_hooks`` does).
    """
    if direction.ndim != 1:
        raise ValueError(f"direction must be 1-D [d_model], got shape {tuple(direction.shape)}")
    g = Gate.parse(gate)
    a = _alpha_tensor(alpha)
    counter = _PositionCounter()
    cast: dict[tuple[torch.device, torch.dtype], tuple[Tensor, float | Tensor]] = {}

    def hook_fn(resid: Tensor, *, hook: Any) -> Tensor:
        batch, n_pos, d = resid.shape
        if d != direction.shape[0]:
            raise ValueError(
                f"{getattr(hook, 'name', 'hook')}: vector has d_model {direction.shape[0]}, "
                f"activation has {d}"
            )
        first, prompt_len = counter.advance(n_pos)
        key = (resid.device, resid.dtype)
        if key not in cast:
            v = direction.to(device=resid.device, dtype=resid.dtype)
            cast[key] = (
                v,
                a.to(resid.device, resid.dtype).view(-1, 1, 1) if isinstance(a, Tensor) else a,
            )
        v, scale = cast[key]
        if isinstance(scale, Tensor) and scale.shape[0] != batch:
            raise ValueError(f"alpha has {scale.shape[0]} values but the batch has {batch} rows")
        delta = scale * v
        if g.is_all:
            return resid + delta
        offsets = torch.arange(first, first + n_pos, device=resid.device) - prompt_len
        on = ((offsets >= g.start) & (offsets < g.stop)).to(resid.dtype).view(1, n_pos, 1)
        return resid + on * delta

    hook_fn.reset = counter.reset  # type: ignore[attr-defined]
    return hook_fn


def _check_hook_points(model: HookedModel, names: Sequence[str]) -> None:
    known = model.hook_dict
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(
            f"{model.cfg.model_name} has no hook point(s) {missing} "
            f"(it has {model.cfg.n_layers} layers, 0..{model.cfg.n_layers - 1})"
        )


def steering_hooks(
    model: HookedModel,
    vector: SteeringVector,
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: GateSpec | Gate = "all",
) -> list[HookPair]:
    """Plain ``(hook_name, fn)`` pairs that add ``alpha * vector`` (validated against ``model``)."""
    vector.validate(model)
    names = [hook_name(layer, vector.hook) for layer in vector.layers]
    _check_hook_points(model, names)
    pairs: list[HookPair] = [
        (name, add_vector_hook(vector.directions[layer], alpha, gate))
        for name, layer in zip(names, vector.layers, strict=True)
    ]
    return pairs


@dataclass
class SteeringHandle:
    """What ``steering()`` yields: the registered hooks, with ``reset()`` for the gates."""

    hooks: list[HookPair]

    def reset(self) -> None:
        """Forget counted positions: the next call is a new prompt."""
        for _, fn in self.hooks:
            fn.reset()  # type: ignore[attr-defined]


@contextmanager
def steering(
    model: HookedModel,
    vector: SteeringVector,
    alpha: float | Sequence[float] | Tensor = 1.0,
    gate: GateSpec | Gate = "all",
) -> Iterator[SteeringHandle]:
    """Add ``alpha * vector`` to the residual stream inside the block.

    Registration happens inside TransformerLens ``model.hooks()``, which adds hooks inside
    ``try`` and removes exactly the ones it added in ``finally`` — on normal exit, on an
    exception in the block, and when a registration part-way fails. Contexts nest: each
    removes only its own hooks.
    """
    pairs = steering_hooks(model, vector, alpha, gate)
    with model.hooks(fwd_hooks=pairs):  # type: ignore[arg-type]
        yield SteeringHandle(pairs)
